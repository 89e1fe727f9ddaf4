"""Checkpoints behind one small Orbax wrapper: params, EMA params, optimizer state and step.

Saves are synchronous and atomic: Orbax writes `<step>.orbax-checkpoint-tmp…` and renames it when
complete, so a run killed mid-save leaves the previous checkpoints intact and a partial folder that
is ignored (and removed by the next save). A latest checkpoint that cannot be read (truncated,
corrupted or emptied files) is skipped with a warning, and once an earlier one has been restored it
is moved to `checkpoints_unreadable/` so the run can write that step again. When no checkpoint can
be restored the error says so: a run never starts from scratch over existing checkpoints.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix for a save in progress


def _first_line(e: Exception) -> str:
  return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


class Checkpointer:
  """`CheckpointManager` over `workdir/checkpoints` with StandardSave / StandardRestore."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.quarantine = os.path.abspath(os.path.join(workdir, "checkpoints_unreadable"))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    # One explicit handler: the item layout is fixed, so an emptied step folder cannot make Orbax
    # misread the other checkpoints (without it, every restore then failed).
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())
    self._cleaned = False

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def partial_saves(self) -> list[str]:
    """Folders of saves that were interrupted (e.g. by a kill) before Orbax finalized them."""
    return sorted(glob.glob(os.path.join(self.directory, f"*{TMP_MARK}*")))

  def save(self, step: int, state: dict[str, Any]) -> None:
    """Writes `state` (a pytree) as checkpoint `step` and waits until it is on disk."""
    if not self._cleaned:  # only a writer cleans: a reader may run beside a training run
      for path in self.partial_saves():
        log.warning("Removing %s, a checkpoint save that was interrupted.", path)
        shutil.rmtree(path, ignore_errors=True)
      self._cleaned = True
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state: dict[str, Any],
              step: int | None = None) -> tuple[int, dict[str, Any]]:
    """Restores into the structure of `abstract_state` (from `jax.eval_shape`).

    With `step=None` the latest readable checkpoint is used; unreadable ones are skipped with a
    warning and, once an earlier one was restored (so the structure matches and they are damaged),
    moved to `self.quarantine`. Raises FileNotFoundError when there is no checkpoint and ValueError
    when none can be restored (nothing is moved then).
    """
    steps = self.all_steps() if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}: train first (python train.py ...).")
    if step is None:
      self._warn_about_partial_saves(steps[-1])
    errors = []
    for s in reversed(steps):
      try:
        restored = self._manager.restore(s, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # noqa: BLE001 — any unreadable checkpoint is skipped, with its reason.
        log.warning("Checkpoint %d in %s cannot be restored (%s); trying an earlier one.",
                    s, self.directory, _first_line(e))
        errors.append((s, _first_line(e)))
        continue
      for bad, _ in errors:
        self._move_aside(bad)
      return s, restored
    listing = "\n  ".join(f"step {s}: {msg}" for s, msg in errors)
    raise ValueError(
        f"None of the checkpoints in {self.directory} can be restored into the model built from "
        f"the config, so the run cannot resume (it does not start over either):\n  {listing}\n"
        f"If the config differs from the one they were trained with (workdir/config.json), use "
        f"that one; if the files are damaged, move {self.directory} aside to train from scratch. "
        f"Nothing was changed.")

  def _warn_about_partial_saves(self, latest: int) -> None:
    for path in self.partial_saves():
      m = re.match(r"(\d+)", os.path.basename(path))
      if m and int(m.group(1)) > latest:
        log.warning("Checkpoint %s is incomplete (%s: its save was interrupted, or is still in "
                    "progress) and is ignored; the latest complete one is step %d.",
                    m.group(1), path, latest)

  def _move_aside(self, step: int) -> None:
    """Moves the unreadable checkpoint `step` out of the manager's folder (kept for inspection)."""
    os.makedirs(self.quarantine, exist_ok=True)
    dest, n = os.path.join(self.quarantine, str(step)), 1
    while os.path.exists(dest):
      dest, n = os.path.join(self.quarantine, f"{step}-{n}"), n + 1
    shutil.move(os.path.join(self.directory, str(step)), dest)
    log.warning("Moved unreadable checkpoint %d to %s; step %d will be trained and saved again.",
                step, dest, step)
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """The shape/dtype/sharding skeleton of a pytree, for `Checkpointer.restore`.

  Arrays restore with the sharding of `tree`'s leaves, not the one they were saved with, so a
  checkpoint written on 8 devices restores on 1 (and the other way round).
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=getattr(x, "sharding", None)), tree)
