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
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from minidiff import config as config_lib
from minidiff.core import samplers
from minidiff.core.schedule import make_schedule
from minidiff.core.specs import GuidanceSpec
from minidiff.study import plots
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


def run_strategy(eps_apply, params, schedule, spec: GuidanceSpec, options: SamplingOptions, x_T,  # noqa: N803
                 labels, key, *, null_id: int, mesh: Mesh | None = None) -> SampleResult:
  """Samples every (x_T, label) pair with one strategy, in fixed-size batches (one compile).

  Data-parallel over `mesh` (default: every device): parameters replicated, each batch split along
  the batch axis. The batch is rounded up to a multiple of the device count (padding is dropped).
  """
  mesh = mesh or sharding.data_mesh()
  run = samplers.make_sampler(
      eps_apply, schedule=schedule, strategy=spec.strategy, sampler=options.sampler,
      num_steps=options.num_steps, eta=options.eta, spacing=options.spacing,
      clip_x0=options.clip_x0, x0_steps=options.x0_steps, compute_d=False)
  n = len(labels)
  b = -(-min(options.batch, n) // mesh.size) * mesh.size
  pad = -n % b
  x_all = np.concatenate([x_T, np.resize(x_T, (pad,) + x_T.shape[1:])]) if pad else x_T
  y_all = np.concatenate([labels, np.resize(labels, pad)]) if pad else labels
  params = sharding.replicate(params, mesh)
  null, = sharding.shard_rows(mesh, np.full((b,), null_id, np.int32))
  batch = lambda i: sharding.shard_rows(mesh, x_all[i:i + b], y_all[i:i + b])  # noqa: E731
  t0 = time.perf_counter()
  compiled = run.lower(params, *batch(0), null, key).compile()
  compile_s = time.perf_counter() - t0
  outs = []
  t0 = time.perf_counter()
  for i in range(0, len(y_all), b):
    x0, diag = compiled(params, *batch(i), null, sharding.replicate(jax.random.fold_in(key, i // b), mesh))
    outs.append(sharding.to_host((x0, diag)))
  sample_s = time.perf_counter() - t0
  per_step = lambda name: np.concatenate([getattr(o[1], name) for o in outs], axis=1)[:, :n]  # noqa: E731
  result = SampleResult(
      samples=np.concatenate([o[0] for o in outs])[:n], labels=labels, t=np.asarray(outs[0][1].t),
      d_eps=per_step("d_eps"), d_x0=per_step("d_x0"), w=per_step("w"), x0=per_step("x0"),
      transition_step=np.concatenate([o[1].transition_step for o in outs])[:n],
      compile_s=compile_s, sample_s=sample_s)
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


def result_meta(spec: GuidanceSpec, options: SamplingOptions, checkpoint_step: int) -> str:
  """What identifies a strategy's samples: a finished file with the same meta is reused."""
  return json.dumps(dict(label=spec.label, strategy=repr(spec.strategy), step=int(checkpoint_step),
                         options=dataclasses.asdict(options)), sort_keys=True)


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


def save_result(result: SampleResult, spec: GuidanceSpec, outdir: str, meta: str = "") -> dict[str, str]:
  """Writes `<slug>.npz`, `<slug>_grid.png` and `<slug>_dt.png` into outdir; returns the paths."""
  os.makedirs(outdir, exist_ok=True)
  paths = {k: os.path.join(outdir, f"{spec.slug}{suffix}")
           for k, suffix in (("npz", ".npz"), ("grid", "_grid.png"), ("dt", "_dt.png"))}
  tmp = paths["npz"] + ".tmp.npz"
  np.savez_compressed(tmp, samples=result.samples, labels=result.labels, t=result.t,
                      d_eps=result.d_eps, d_x0=result.d_x0, w=result.w,
                      transition_step=result.transition_step, x0=result.x0, meta=meta,
                      timing=np.array([result.compile_s, result.sample_s]))
  os.replace(tmp, paths["npz"])  # atomic: an interrupted study never leaves a half-written file
  # Up to 10 samples of each requested class, one class per row.
  order = np.concatenate([np.flatnonzero(result.labels == c)[:10] for c in np.unique(result.labels)])
  plots.save_grid(result.samples[order], paths["grid"])
  fired = result.transition_step >= 0
  plots.plot_d_curves(result.t, result.d_eps, result.transition_step, paths["dt"],
                      title=f"{spec.label}: d_t per sample ({int(fired.sum())}/{len(fired)} transitions)",
                      groups={"transition fired": fired, "no transition": ~fired})
  return paths


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
