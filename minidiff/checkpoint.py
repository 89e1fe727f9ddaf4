"""Checkpoints behind one small Orbax wrapper: params, EMA params, optimizer state and step.

Saves are synchronous and atomic (Orbax writes a temporary directory and renames it when complete),
so a run killed mid-save leaves the previous checkpoints intact. A latest checkpoint that cannot be
read is skipped with a warning and the previous one is used.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """`CheckpointManager` over `workdir/checkpoints` with StandardSave / StandardRestore."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: dict[str, Any]) -> None:
    """Writes `state` (a pytree) as checkpoint `step` and waits until it is on disk."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any]]:
    """Restores into the structure of `abstract_state` (from `jax.eval_shape`).

    With `step=None` the latest readable checkpoint is used; unreadable ones are skipped with a
    warning. Raises FileNotFoundError when there is none.
    """
    steps = self.all_steps() if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}: train first (python train.py ...).")
    errors = []
    for s in reversed(steps):
      try:
        return s, self._manager.restore(s, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # noqa: BLE001 — any unreadable checkpoint is skipped, with its reason.
        log.warning("Checkpoint %d in %s cannot be restored (%s: %s); trying an earlier one.",
                    s, self.directory, type(e).__name__, str(e).splitlines()[0][:300])
        errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    raise ValueError(
        f"None of the checkpoints in {self.directory} matches the model built from the config "
        f"(the config differs from the one they were trained with?):\n  " + "\n  ".join(errors))

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """The shape/dtype/sharding skeleton of a pytree, for `Checkpointer.restore`.

  Arrays restore with the sharding of `tree`'s leaves, not the one they were saved with, so a
  checkpoint written on 8 devices restores on 1 (and the other way round).
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=getattr(x, "sharding", None)), tree)
