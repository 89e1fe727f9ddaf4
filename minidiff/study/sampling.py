"""Sampling a trained run: shared initial noises, batched jitted samplers, outputs.

Several guidance specs (minidiff.core.specs, e.g. `static:tau=600:w_post=3`) are compared on the
SAME initial noises, classes and sampler keys.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zipfile
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from minidiff import config as config_lib
from minidiff.core import samplers
from minidiff.core.schedule import make_schedule
from minidiff.core.specs import GuidanceSpec
from minidiff.train import precision, sharding, state
from minidiff.train.checkpoint import Checkpointer

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

  def validate(self, T: int, num_classes: int) -> None:  # noqa: N803
    """Raises ValueError, naming the flag and its valid range, before anything is compiled."""
    if self.num < 1:
      raise ValueError(f"--num={self.num} must be ≥ 1.")
    if self.batch < 1:
      raise ValueError(f"--batch={self.batch} must be ≥ 1.")
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


def sample_in_batches(compiled_for: Callable, params: Any, x_T: np.ndarray, cond: Any, null: Any,  # noqa: N803
                      key: jax.Array, *, batch: int, mesh: Mesh, num_arms: int | None = None
                      ) -> tuple[list[tuple[np.ndarray, dict, np.ndarray, np.ndarray]], float, float]:
  """Samples N rows in fixed-size chunks, data-parallel over `mesh`; compiles once.

  `compiled_for(params, x_T, cond, null, key)` (example arguments of one chunk) returns the
  compiled sampler. Parameters are replicated and every chunk is split along the batch axis; the
  chunk is rounded up to a multiple of the device count and the padding dropped. Chunk i uses
  `fold_in(key, i)`. `cond` is a pytree with leading dim N, `null` one with leading dim 1.

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
  t0 = time.perf_counter()
  compiled = compiled_for(params, rows(x_all, 0), rows(c_all, 0), null_b, sharding.replicate(key, mesh))
  compile_s = time.perf_counter() - t0
  outs = []
  t0 = time.perf_counter()
  for i in range(0, x_all.shape[0], b):
    out = compiled(params, rows(x_all, i), rows(c_all, i), null_b,
                   sharding.replicate(jax.random.fold_in(key, i // b), mesh))
    outs.append(sharding.to_host(out))
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
      np.asarray([null_id], np.int32), key, batch=options.batch, mesh=mesh or sharding.data_mesh())
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
  """What identifies an arm's samples: a finished file with the same meta is reused."""
  return json.dumps(dict(label=label, strategy=strategy, perturbation=perturbation,
                         step=int(checkpoint_step), options=dataclasses.asdict(options)), sort_keys=True)


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


def load_sampling_model(workdir: str):
  """(config, eps_apply, EMA params, schedule, null_id, step) of the latest checkpoint in workdir.

  Fails with a clear error, before anything is compiled, when there is no checkpoint.
  """
  config = config_lib.load_workdir_config(workdir)
  config_lib.validate_config(config)
  ckpt = Checkpointer(workdir)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory}: train first, e.g. python train.py "
                            f"--config configs/mnist_dup.py --workdir {workdir}")
  ckpt.close()
  model, step = state.load_ema_model(workdir, config)
  graphdef, params = nnx.split(model, nnx.Param)

  def eps_apply(p, x_t, t, cond):
    return nnx.merge(graphdef, p)(x_t, t, cond)

  eps_apply = precision.with_compute_dtype(eps_apply, precision.compute_dtype(config))

  schedule = make_schedule(config.diffusion.schedule, config.diffusion.T)
  return config, eps_apply, params, schedule, config_lib.unet_config(config).null_id, step
