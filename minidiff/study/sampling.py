"""Sampling a trained run: shared initial noises, batched jitted samplers, outputs.

Several guidance specs (minidiff.core.specs, e.g. `static:tau=600:w_post=3`) are compared on the
SAME initial noises, classes and sampler keys. Each arm's `.npz` holds its samples, the per-step
record (t, d_eps, d_x0, w, transition step, x̂₀ snapshots) and, once measured, the per-sample flags
(`flag_copy`, …) and nearest training images (`nn_index`). While an arm samples, a progress bar
counts its sampling steps (`show_step_progress`; the command-line tools turn it on).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zipfile
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from minidiff import config as config_lib
from minidiff.core import samplers
from minidiff.core.schedule import make_schedule
from minidiff.core.specs import GuidanceSpec
from minidiff.train import precision, sharding, state

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  num: int = 100
  classes: tuple[int, ...] = ()  # () = every class, cycled
  sampler: str = "ddim"
  num_steps: int = 50
  eta: float = 0.0
  spacing: str = "uniform"
  clip_x0: bool = True
  seed: int = 0
  batch: int = 200
  x0_steps: tuple[int, ...] = ()
  step: int | None = None  # the checkpoint sampled (None: the latest)

  def validate(self, T: int, num_classes: int) -> None:  # noqa: N803
    """Raises ValueError, naming the flag and its valid range, before anything is compiled."""
    if self.num < 1:
      raise ValueError(f"--num={self.num} must be ≥ 1.")
    if self.batch < 1:
      raise ValueError(f"--batch={self.batch} must be ≥ 1.")
    if self.step is not None and self.step < 0:
      raise ValueError(f"--step={self.step} must be a checkpoint step ≥ 0 (omit it for the latest).")
    if self.sampler not in samplers.SAMPLERS:
      raise ValueError(f"--sampler={self.sampler!r}: choose one of {samplers.SAMPLERS}.")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"--eta={self.eta} must lie in [0, 1].")
    if not 1 <= self.num_steps <= T:
      raise ValueError(f"--steps={self.num_steps} must lie in [1, T={T}].")
    samplers.time_grid(T, self.num_steps, self.spacing)  # raises for an unknown spacing
    bad = [c for c in self.classes if not 0 <= c < num_classes]
    if bad:
      raise ValueError(f"--classes contains {bad}; the model has classes 0…{num_classes - 1}.")
    bad = [k for k in self.x0_steps if not -self.num_steps <= k < self.num_steps]
    if bad:
      raise ValueError(f"--x0_steps contains {bad}; step indices lie in [−{self.num_steps}, "
                       f"{self.num_steps}) for --steps={self.num_steps}.")


def options_from_config(config: ml_collections.ConfigDict, **kw: Any) -> SamplingOptions:
  """Defaults from config.sample, then the given keyword values (None = keep)."""
  s = config.sample
  base = dict(sampler=s.sampler, num_steps=s.num_steps, eta=s.eta, spacing=s.spacing,
              clip_x0=s.clip_x0)
  base.update({k: v for k, v in kw.items() if v is not None})
  return SamplingOptions(**base)


def shared_inputs(options: SamplingOptions, *, shape: tuple[int, ...], num_classes: int
                  ) -> tuple[np.ndarray, np.ndarray, jax.Array]:
  """The initial noises x_T [num, ...], requested labels [num] and sampler key, shared by every strategy."""
  classes = options.classes or tuple(range(num_classes))
  labels = np.asarray([classes[i % len(classes)] for i in range(options.num)], np.int32)
  key = jax.random.key(options.seed)
  x_T = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (options.num,) + shape))  # noqa: N806
  return x_T, labels, jax.random.fold_in(key, 1)


def shared_noise(options: SamplingOptions, *, shape: tuple[int, ...]) -> tuple[np.ndarray, jax.Array]:
  """The initial noises x_T [num, ...] and the sampler key every arm (and every seed) shares."""
  x_T, _, key = shared_inputs(options, shape=shape, num_classes=1)  # noqa: N806
  return x_T, key


@dataclasses.dataclass
class SampleResult:
  samples: np.ndarray
  labels: np.ndarray
  t: np.ndarray
  d_eps: np.ndarray  # [S, N]
  d_x0: np.ndarray
  w: np.ndarray
  transition_step: np.ndarray  # [N]
  x0: np.ndarray
  compile_s: float
  sample_s: float

  @property
  def samples_per_s(self) -> float:
    return len(self.samples) / self.sample_s


_PROGRESS: dict[str, Any] = {"steps": False, "bar": None}


def show_step_progress(enabled: bool = True) -> None:
  """Makes the models that `load_sampling_model` builds from now on tick the progress bar once per
  sampling step (a host callback in the jitted sampler; off by default, since XLA's persistent
  compilation cache skips programs with host callbacks). The samples are the same either way."""
  _PROGRESS["steps"] = bool(enabled)


def _tick() -> None:
  bar = _PROGRESS["bar"]
  if bar is not None:
    bar.update(1)


def with_step_ticks(eps_apply: Callable) -> Callable:
  """`eps_apply` that ticks the active sampling progress bar each time it is evaluated (once per
  sampling step: both branches are one forward pass)."""
  def ticking(p, x_t, t, cond):
    jax.debug.callback(_tick)
    return eps_apply(p, x_t, t, cond)
  return ticking


def sample_in_batches(compiled_for: Callable, params: Any, x_T: np.ndarray, cond: Any, null: Any,  # noqa: N803
                      key: jax.Array, *, batch: int, mesh: Mesh, num_arms: int | None = None,
                      desc: str | None = None, steps_per_batch: int | None = None
                      ) -> tuple[list[tuple[np.ndarray, dict, np.ndarray, np.ndarray]], float, float]:
  """Samples N rows in fixed-size chunks, data-parallel over `mesh`; compiles once.

  `compiled_for(params, x_T, cond, null, key)` (example arguments of one chunk) returns the
  compiled sampler. Parameters are replicated and every chunk is split along the batch axis; the
  chunk is rounded up to a multiple of the device count and the padding dropped. Chunk i uses
  `fold_in(key, i)`. `cond` is a pytree with leading dim N, `null` one with leading dim 1.
  A progress bar named `desc` says "compiling" until the sampler is compiled, then counts batches,
  or sampling steps when `steps_per_batch` (model evaluations per batch) is given: step by step
  when the model ticks (`show_step_progress`), else at each batch's end. Its rate and ETA start
  after the compile.

  Returns (per arm: (x₀ [N, ...], {d_eps, d_x0, w: [S, N], transition_step: [N]}, x̂₀ snapshots
  [K, N, ...], t [S])), compile seconds, sampling seconds. `num_arms` None: the sampler's outputs
  have no leading arm axis (one arm).
  """
  n = x_T.shape[0]
  b = -(-min(batch, n) // mesh.size) * mesh.size
  pad = -n % b
  padded = lambda a: np.concatenate([a, np.resize(a, (pad,) + a.shape[1:])]) if pad else a  # noqa: E731
  x_all, c_all = padded(x_T), jax.tree.map(padded, cond)
  params = sharding.replicate(params, mesh)
  null_b = jax.tree.map(lambda a: sharding.shard_rows(mesh, np.repeat(np.asarray(a), b, axis=0))[0], null)
  rows = lambda tree, i: jax.tree.map(lambda a: sharding.shard_rows(mesh, a[i:i + b])[0], tree)  # noqa: E731
  num_batches = x_all.shape[0] // b
  per_step = steps_per_batch is not None
  name = desc or "sampling"
  bar = tqdm(total=num_batches * (steps_per_batch if per_step else 1), desc=f"{name} (compiling)",
             unit="step" if per_step else "batch", dynamic_ncols=True, mininterval=1.0, leave=True)
  t0 = time.perf_counter()
  compiled = compiled_for(params, rows(x_all, 0), rows(c_all, 0), null_b, sharding.replicate(key, mesh))
  compile_s = time.perf_counter() - t0
  bar.set_description(name)
  bar.reset()  # the rate and the ETA count from here, after the compile
  outs = []
  t0 = time.perf_counter()
  _PROGRESS["bar"] = bar if per_step else None
  try:
    for i in range(0, x_all.shape[0], b):
      out = compiled(params, rows(x_all, i), rows(c_all, i), null_b,
                     sharding.replicate(jax.random.fold_in(key, i // b), mesh))
      outs.append(sharding.to_host(out))
      if per_step:  # the callbacks may lag the result: settle the count at each batch's end
        bar.n = (i // b + 1) * steps_per_batch
        bar.refresh()
      else:
        bar.update(1)
  finally:
    _PROGRESS["bar"] = None
    bar.close()
  sample_s = time.perf_counter() - t0
  per_arm = []
  for a in ([None] if num_arms is None else range(num_arms)):
    pick = (lambda v: v) if a is None else (lambda v, a=a: v[a])
    x0 = np.concatenate([pick(o[0]) for o in outs])[:n]
    diag = {name: np.concatenate([pick(getattr(o[1], name)) for o in outs], axis=-1)[..., :n]
            for name in ("d_eps", "d_x0", "w", "transition_step")}
    snaps = np.concatenate([pick(o[1].x0) for o in outs], axis=1)[:, :n]
    per_arm.append((x0, diag, snaps, np.asarray(outs[0][1].t)))
  return per_arm, compile_s, sample_s


def to_result(out: tuple, labels: np.ndarray, compile_s: float, sample_s: float) -> "SampleResult":
  """A SampleResult from one arm's output of `sample_in_batches`."""
  x0, diag, snaps, t = out
  return SampleResult(samples=x0, labels=np.asarray(labels), t=t, d_eps=diag["d_eps"],
                      d_x0=diag["d_x0"], w=diag["w"], transition_step=diag["transition_step"],
                      x0=snaps, compile_s=compile_s, sample_s=sample_s)


def run_strategy(eps_apply, params, schedule, spec: GuidanceSpec, options: SamplingOptions, x_T,  # noqa: N803
                 labels, key, *, null_id: int, mesh: Mesh | None = None) -> SampleResult:
  """Samples every (x_T, label) pair with one strategy, in fixed-size batches (one compile).

  Data-parallel over `mesh` (default: every device), see `sample_in_batches`.
  """
  run = samplers.make_sampler(
      eps_apply, schedule=schedule, strategy=spec.strategy, sampler=options.sampler,
      num_steps=options.num_steps, eta=options.eta, spacing=options.spacing,
      clip_x0=options.clip_x0, x0_steps=options.x0_steps, compute_d=False)
  (out,), compile_s, sample_s = sample_in_batches(
      lambda *example: run.lower(*example).compile(), params, x_T, np.asarray(labels, np.int32),
      np.asarray([null_id], np.int32), key, batch=options.batch, mesh=mesh or sharding.data_mesh(),
      desc=spec.label, steps_per_batch=options.num_steps)
  result = to_result(out, labels, compile_s, sample_s)
  check_finite(result, spec.label)
  return result


def check_finite(result: SampleResult, label: str, *, show: int = 20) -> None:
  """Raises FloatingPointError naming the strategy and the samples that are NaN/Inf, if any."""
  n = len(result.labels)
  bad = np.flatnonzero(~np.isfinite(result.samples.reshape(n, -1)).all(axis=1))
  if not len(bad):
    return
  more = f" (first {show} shown)" if len(bad) > show else ""
  raise FloatingPointError(
      f"Strategy {label!r} produced NaN/Inf in {len(bad)} of {n} samples{more}: indices "
      f"{bad[:show].tolist()}, classes {result.labels[bad[:show]].tolist()}. Nothing was saved for "
      f"it. Check that the checkpoint's training loss was finite, or lower the guidance weight.")


def result_meta(label: str, strategy: str, perturbation: str, options: SamplingOptions,
                checkpoint_step: int) -> str:
  """What identifies an arm's samples: a finished file with the same meta is reused. (The
  checkpoint is `step`; the options' `step` request is left out, so files made before it existed
  are still recognised.)"""
  opts = dataclasses.asdict(options)
  opts.pop("step")
  return json.dumps(dict(label=label, strategy=strategy, perturbation=perturbation,
                         step=int(checkpoint_step), options=opts), sort_keys=True)


def load_result(path: str, meta: str) -> SampleResult | None:
  """The SampleResult saved at `path` if it was made with the same `meta`, else None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as f:
      if "meta" not in f or str(f["meta"]) != meta:
        return None
      timing = f["timing"]
      return SampleResult(**{k: f[k] for k in ("samples", "labels", "t", "d_eps", "d_x0", "w",
                                                "transition_step", "x0")},
                          compile_s=float(timing[0]), sample_s=float(timing[1]))
  # A partial or corrupt file (a cut-short .npz raises BadZipFile): sample again.
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    log.warning("Ignoring unreadable %s (%s); sampling again.", path, e)
    return None


def save_npz(result: SampleResult, path: str, meta: str = "") -> str:
  """Writes the samples and their per-step record to `path` atomically (an interrupted study never
  leaves a half-written file); `load_result(path, meta)` reads it back."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, samples=result.samples, labels=result.labels, t=result.t,
                      d_eps=result.d_eps, d_x0=result.d_x0, w=result.w,
                      transition_step=result.transition_step, x0=result.x0, meta=meta,
                      timing=np.array([result.compile_s, result.sample_s]))
  os.replace(tmp, path)
  return path


def attach_measurements(path: str, row: Mapping[str, Any]) -> None:
  """Adds an arm's per-sample measurements to its `.npz` (atomically): `flag_<name>` [N] bool for
  each flag of `row["flags"]` ("0101…" strings, e.g. copy) and `nn_index` [N] int32, the nearest
  de-duplicated training image. The samples and their meta are kept as they are."""
  new = {f"flag_{name}": np.frombuffer(bits.encode(), np.uint8) == ord("1")
         for name, bits in row["flags"].items()}
  new["nn_index"] = np.asarray(row["nn_index"], np.int32)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  if all(k in arrays and np.array_equal(arrays[k], v) for k, v in new.items()):
    return  # a resumed study measured the same: the file stays untouched
  arrays.update(new)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def load_sampling_model(workdir: str, *, step: int | None = None, progress: bool | None = None):
  """(config, eps_apply, EMA params, schedule, null_id, step) of a checkpoint in workdir: the
  latest, or `step` (an earlier one that is still on disk; train.max_to_keep keeps the last few).

  Fails with a clear error, before anything is compiled, when there is no such checkpoint.
  `progress` (default: `show_step_progress`'s setting): the model ticks the sampling progress bar.
  """
  config = config_lib.load_workdir_config(workdir)
  config_lib.validate_config(config)
  model, step = state.load_ema_model(workdir, config, step=step)
  graphdef, params = nnx.split(model, nnx.Param)

  def eps_apply(p, x_t, t, cond):
    return nnx.merge(graphdef, p)(x_t, t, cond)

  eps_apply = precision.with_compute_dtype(eps_apply, precision.compute_dtype(config))
  if _PROGRESS["steps"] if progress is None else progress:
    eps_apply = with_step_ticks(eps_apply)

  schedule = make_schedule(config.diffusion.schedule, config.diffusion.T)
  return config, eps_apply, params, schedule, config_lib.unet_config(config).null_id, step
