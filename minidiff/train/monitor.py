"""The memorization monitor: does the model copy its training images yet, and since when?

Every `config.monitor.every` steps (and at the last step) the trainer samples K images of the EMA
model from fixed initial noises and conditions, drawn once from config.seed, so every check and
every resumed run sees the same inputs. The sampler is minidiff.core.samplers' deterministic DDIM
(η = 0, `monitor.num_steps` steps, constant guidance weight `monitor.w`: 0 the null branch, 1 the
conditional model, > 1 CFG), one jitted `lax.scan`. The samples are measured with
minidiff.metrics.memorization against the DE-DUPLICATED training set, exactly as the study does:

  copy_rate            fraction of the K samples with ‖x̂ − NN₁‖ / ‖x̂ − NN₂‖ < 1/3;
  copy_rate_duplicated the copies whose NN₁ is a duplicated training image,
  copy_rate_unique     the copies whose NN₁ is a non-duplicated ("unique") one (both fractions of
                       all K samples: they add up to copy_rate);
  class_accuracy       with `monitor.class_accuracy` (class models): the share of samples that the
                       study's evaluation classifier (cached, minidiff.metrics.classifier) assigns
                       to the requested class.

τ_mem (Bonnaire et al. 2025) is the first monitored step whose copy rate exceeds a level; it is
known to within one monitor interval (`tau_mem`). Early stop: the first check with
copy_rate_unique > `monitor.stop_copy_rate` ends training with a checkpoint (the trainer's job).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from minidiff import config as config_lib
from minidiff.core import guidance, samplers
from minidiff.core.schedule import make_schedule
from minidiff.data.duplication import DuplicatedSubset
from minidiff.metrics import memorization
from minidiff.train import precision

# The monitor's keys: fold_in(key(seed), MONITOR_STREAM). Training step s uses fold_in(key(seed), s),
# so the two never meet below 2³¹ − 1 steps.
MONITOR_STREAM = 2**31 - 1
RATE_KEYS = ("copy_rate", "copy_rate_duplicated", "copy_rate_unique")
TAU_LEVELS = (0.1, 0.5)  # the copy-rate levels τ_mem is reported at
PLOT_NAME = "monitor.png"


@dataclasses.dataclass(frozen=True)
class MonitorInputs:
  """The fixed inputs of every check (numpy arrays, K = monitor.num_samples)."""

  x_T: np.ndarray  # [K, H, W, C] initial noises  # noqa: N815
  cond: np.ndarray  # [K] class ids, or [K, L] token ids of K training captions
  null: np.ndarray  # [K] null ids, or [K, L] empty-caption tokens
  key: jax.Array  # the sampler key (DDIM with η = 0 draws nothing from it)
  requested_class: np.ndarray | None  # [K] the class each sample is asked for; None for text


def monitor_inputs(config: ml_collections.ConfigDict, conds: np.ndarray,
                   null: int | np.ndarray) -> MonitorInputs:
  """Noises and conditions of the monitor, a function of config.seed and num_samples only.

  Class models ask for classes 0, 1, …, C−1 in turn; text models for the captions of K training
  examples drawn (with replacement only if K exceeds the training set) from the same key.
  """
  k = config_lib.sections(config).monitor.num_samples
  d = config.data
  key = jax.random.fold_in(jax.random.key(config.seed), MONITOR_STREAM)
  shape = (k, d.resolution, d.resolution, d.channels)
  x_T = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), shape, np.float32))  # noqa: N806
  if config_lib.is_text(config):
    idx = np.asarray(jax.random.choice(jax.random.fold_in(key, 2), len(conds), (k,),
                                       replace=k > len(conds)))
    cond = np.asarray(conds)[idx]
    return MonitorInputs(x_T, cond, np.repeat(np.asarray(null)[None], k, axis=0),
                         jax.random.fold_in(key, 1), None)
  num_classes = config_lib.unet_config(config).num_classes
  labels = (np.arange(k) % num_classes).astype(np.int32)
  return MonitorInputs(x_T, labels, np.full((k,), null, np.int32), jax.random.fold_in(key, 1),
                       labels)


class Monitor:
  """Samples the fixed inputs with the EMA parameters and measures copying (`__call__`)."""

  def __init__(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
               subset: DuplicatedSubset, conds: np.ndarray, null: int | np.ndarray, *,
               classifier: Any = None):
    """`classifier` (a minidiff.metrics.classifier.Classifier) scores class accuracy; None: not."""
    m = config_lib.sections(config).monitor
    self.inputs = monitor_inputs(config, conds, null)
    self.unique_images = subset.unique_images
    self.is_duplicated = np.asarray(subset.manifest.is_duplicated, bool)
    self.classifier = classifier
    dtype = precision.compute_dtype(config)

    def eps_apply(p, x_t, t, cond):
      return nnx.merge(graphdef, p)(x_t, t, cond)

    self._run = samplers.make_sampler(
        precision.with_compute_dtype(eps_apply, dtype),
        schedule=make_schedule(config.diffusion.schedule, config.diffusion.T),
        strategy=guidance.Constant(w=float(m.w)), sampler="ddim", num_steps=m.num_steps, eta=0.0,
        spacing=config.sample.spacing, clip_x0=config.sample.clip_x0)
    self._compiled = None
    self.description = (f"DDIM-{m.num_steps} (η = 0), w = {float(m.w):g}, {m.num_samples} fixed "
                        f"noises; ratio test against {len(self.unique_images)} de-duplicated\n"
                        f"training images ({int(self.is_duplicated.sum())} duplicated)")

  def _args(self, params: Any) -> tuple:
    # The inputs go where the parameters are (replicated over a data-parallel mesh, say).
    where = jax.tree.leaves(params)[0].sharding
    i = self.inputs
    return (params, *jax.device_put((i.x_T, i.cond, i.null, i.key), where))

  def compile(self, params: Any) -> float:
    """Compiles the sampler for `params`' structure now (not inside the first check); seconds."""
    t0 = time.perf_counter()
    self._compiled = self._run.lower(*self._args(params)).compile()
    return time.perf_counter() - t0

  def sample(self, params: Any) -> np.ndarray:
    """The K monitor samples [K, H, W, C] of `params` (float32 numpy)."""
    if self._compiled is None:
      self.compile(params)
    x0, _ = self._compiled(*self._args(params))
    return np.asarray(x0, np.float32)

  def measure(self, samples: np.ndarray) -> dict[str, float]:
    """The monitor's numbers for samples [K, ...] (see the module docstring)."""
    summary = memorization.summarize(
        memorization.analyse_samples(samples, self.unique_images, self.is_duplicated))
    out = {"copy_rate": summary["memorization_rate"],
           "copy_rate_duplicated": summary["copy_rate_duplicated"],
           "copy_rate_unique": summary["copy_rate_non_duplicated"]}
    if self.classifier is not None and self.inputs.requested_class is not None:
      predicted = self.classifier.predict(samples)
      out["class_accuracy"] = float(np.mean(predicted == self.inputs.requested_class))
    return out

  def __call__(self, params: Any) -> dict[str, float]:
    """Samples with `params` (the EMA parameters) and measures: {copy_rate, …}."""
    return self.measure(self.sample(params))


def load_classifier(config: ml_collections.ConfigDict, *, seed: int = 0) -> Any:
  """The study's evaluation classifier for config.data (cached; trained once if absent)."""
  from minidiff.metrics import classifier as classifier_lib
  return classifier_lib.load_or_train_classifier(
      resolution=config.data.resolution, dataset=config.data.name, seed=seed,
      settings=classifier_lib.TrainSettings(epochs=config.study.get("classifier_epochs", 15)))


def should_stop(values: dict[str, float], stop_copy_rate: float) -> bool:
  """Whether a check ends training: copy_rate_unique > stop_copy_rate (1 never stops)."""
  return stop_copy_rate < 1.0 and values["copy_rate_unique"] > stop_copy_rate


def read_curve(metrics_path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(steps [P], {name: [P] values}) of the monitored records of a metrics.jsonl, by step."""
  steps, values = [], {}
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    records = sorted((r for r in records if "monitor" in r), key=lambda r: r["step"])
    steps = [r["step"] for r in records]
    names = sorted({k for r in records for k in r["monitor"]})
    values = {k: np.asarray([r["monitor"].get(k, np.nan) for r in records], np.float64) for k in names}
  return np.asarray(steps, np.int64), values


def tau_mem(steps: Sequence[int], rates: Sequence[float], level: float) -> int | None:
  """τ_mem: the first monitored step whose copy rate exceeds `level` (None: never).

  Known to within the monitor interval: memorization set in after the previous monitored step.
  """
  above = np.flatnonzero(np.asarray(rates, np.float64) > level)
  return int(np.asarray(steps)[above[0]]) if len(above) else None


def plot_curve(metrics_path: str, png_path: str, *, title: str = "") -> str | None:
  """Copy rate (all / duplicated / unique) and class accuracy against step, as a PNG; None if no
  monitored record."""
  steps, values = read_curve(metrics_path)
  if not len(steps):
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.6))
  styles = {"copy_rate": ("copy rate (all)", "k", "-"),
            "copy_rate_duplicated": ("copies of duplicated images", "tab:red", "--"),
            "copy_rate_unique": ("copies of unique images", "tab:blue", "--"),
            "class_accuracy": ("class accuracy", "tab:green", ":")}
  for key, (label, color, ls) in styles.items():
    if key in values:
      ax.plot(steps, values[key], ls, color=color, marker=".", label=label)
  ax.set_xlabel("training step")
  ax.set_ylabel("fraction of monitor samples")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=8)
  fig.tight_layout()
  tmp = png_path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, png_path)
  return png_path
