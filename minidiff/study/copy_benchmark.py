"""The copy-detection benchmark on a trained run: its data, its own reconstructions, its control.

  python scripts/copy_benchmark.py --workdir runs/mnist_dup --control runs/mnist_nodup_s0 \\
      --study runs/mnist_dup/study --out docs/results/copy_benchmark

Adds to the data-only known answers of `minidiff.metrics.copy_benchmark`:
  * positives: the model's reconstructions of its training images — each image DDIM-inverted
    (η = 0, conditional, the sampler's grid walked upwards) to x_T and sampled back with DDIM at
    w = 1 from there: what the model does to an image it has learnt;
  * negatives: samples of a control model trained on the same unique images WITHOUT duplication,
    for the memorized classes (w = 1 and CFG w = 7.5), scored against the image the duplicated
    model memorized — smooth, class-average samples a threshold set on real images alone could
    mistake for copies;
  * the distance of the duplicated model's own CFG w = 7.5 copies to their image, per class: the
    benchmark reports TPR on the positives no further from their source than that.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.core import samplers, specs
from minidiff.metrics import copy_benchmark as cb
from minidiff.study import sampling

log = logging.getLogger(__name__)


def _strategy(spec: str, schedule):
  (arm,) = specs.parse_guidance(spec, T=schedule.T)
  return arm.strategy


def ddim_invert(eps_apply, params, schedule, x0: np.ndarray, cond: np.ndarray, *,
                num_steps: int = 50, spacing: str = "uniform") -> np.ndarray:
  """x_T of `x0` [B, ...] under deterministic DDIM (η = 0) with the conditional ε, walking the
  sampler's grid upwards: x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'}) ε(x_t, t) (Song et al. 2021, eq. 13
  run backwards). A Python loop over one jitted step: this is analysis, not sampling."""
  grid = samplers.time_grid(schedule.T, num_steps, spacing)[::-1]  # ascending

  @jax.jit
  def step(x, t, t_next):
    tt = jnp.full((x.shape[0],), t, jnp.int32)
    eps = eps_apply(params, x, tt, cond)
    ab, ab_next = schedule.alpha_bar[t], schedule.alpha_bar[t_next]
    x0_hat = (x - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)
    return jnp.sqrt(ab_next) * x0_hat + jnp.sqrt(1.0 - ab_next) * eps

  x = jnp.asarray(x0, jnp.float32)
  for t, t_next in zip(grid[:-1], grid[1:]):
    x = step(x, int(t), int(t_next))
  return np.asarray(x)


def reconstructions(workdir: str, unique_images: np.ndarray, labels: np.ndarray,
                    sources: np.ndarray, *, num_steps: int = 50) -> cb.Positives:
  """The model's DDIM reconstructions (invert, then sample back at w = 1) of `sources`."""
  config, eps_apply, params, schedule, null_id, _ = sampling.load_sampling_model(workdir)
  x0 = np.asarray(unique_images, np.float32)[sources]
  cond = np.asarray(labels, np.int32)[sources]
  x_T = ddim_invert(eps_apply, params, schedule, x0, cond, num_steps=num_steps)  # noqa: N806
  run = samplers.make_sampler(eps_apply, schedule=schedule, strategy=_strategy("conditional", schedule),
                              sampler="ddim", num_steps=num_steps, eta=0.0,
                              clip_x0=bool(config.sample.clip_x0))
  out, _ = run(params, x_T, cond, np.full(len(cond), null_id, np.int32), jax.random.key(0))
  return cb.Positives(np.asarray(out, np.float32), np.asarray(sources, np.int64),
                      ("reconstruction",) * len(sources), np.full(len(sources), float(num_steps)))


def control_samples(control_workdir: str, classes: Sequence[int], named_of_class: dict, *,
                    num: int = 200, ws: Sequence[float] = (1.0, 7.5), seed: int = 0
                    ) -> dict[str, cb.ExtraNegatives]:
  """Samples of the control model (no duplication) for `classes`, one set per w, each row
  targeted at the duplicated model's memorized image of its class."""
  config, eps_apply, params, schedule, null_id, _ = sampling.load_sampling_model(control_workdir)
  shape = (config.data.resolution, config.data.resolution, config.data.channels)
  labels = np.asarray([classes[i % len(classes)] for i in range(num)], np.int32)
  x_T = np.asarray(jax.random.normal(jax.random.key(seed), (num,) + shape), np.float32)  # noqa: N806
  target = np.asarray([named_of_class[int(c)] for c in labels], np.int64)
  out = {}
  for w in ws:
    spec = "conditional" if w == 1 else f"cfg:w={w:g}"
    run = samplers.make_sampler(eps_apply, schedule=schedule, strategy=_strategy(spec, schedule),
                                sampler="ddim", num_steps=int(config.sample.num_steps), eta=0.0,
                                clip_x0=bool(config.sample.clip_x0))
    x0, _ = run(params, x_T, labels, np.full(num, null_id, np.int32), jax.random.key(seed + 1))
    out[f"control_w{w:g}"] = cb.ExtraNegatives(np.asarray(x0, np.float32), labels, target)
  return out


def model_copy_distance(study_dir: str, unique_images: np.ndarray, *, arm_slug: str = "cfg_w7.5",
                        seed_dir: str = "seed_0") -> dict[int, float]:
  """Per memorized class, the largest pixel L2 of the study's `arm_slug` samples to the image
  their condition names (at CFG w = 7.5 every memorized-class sample of the default model is a
  visible copy: these distances are how far the model's own copies lie from their image)."""
  with open(os.path.join(study_dir, "results.json")) as f:
    results = json.load(f)
  cond = results["seeds"][0]["conditions"]
  target, requested = np.asarray(cond["target_image"]), np.asarray(cond["requested_class"])
  samples = np.load(os.path.join(study_dir, seed_dir, f"{arm_slug}.npz"))["samples"]
  out = {}
  for c in np.unique(requested[target >= 0]):
    rows = (requested == c) & (target >= 0)
    d = np.linalg.norm((samples[rows] - unique_images[target[rows]]).reshape(rows.sum(), -1), axis=1)
    out[int(c)] = float(d.max())
  return out


def tpr_figure(result: dict, path: str, *, scores: Sequence[str]) -> None:
  """TPR against corruption strength, one panel per corruption kind, one line per score."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  kinds = {}
  for key in next(iter(result["metrics"].values()))["by_kind"]:
    k, s = key.split(":")
    kinds.setdefault(k, []).append(float(s))
  fig, axes = plt.subplots(1, len(kinds), figsize=(2.6 * len(kinds), 2.6), squeeze=False)
  for ax, (k, levels) in zip(axes[0], kinds.items()):
    for name in scores:
      if name not in result["metrics"]:
        continue
      by = result["metrics"][name]["by_kind"]
      ax.plot(levels, [by[f"{k}:{s:g}"]["tpr"] for s in levels], "o-", ms=3, label=name)
    ax.set_title(k, fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.tick_params(labelsize=7)
  axes[0, 0].set_ylabel("TPR at 1% FPR", fontsize=8)
  axes[0, -1].legend(fontsize=6, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summary_rows(result: dict) -> list[dict[str, Any]]:
  """One row per score: AUC, TPR, FPRs (held-out, hard, control) — for the Markdown table."""
  rows = []
  for name, m in result["metrics"].items():
    within = (m.get("within_copy_distance") or {}).get("all") or {}
    extra = {k: v["fpr"] for k, v in m["extra_negatives"].items()}
    rows.append(dict(score=name, auc=m["auc"], tpr=m["tpr"], tpr_within=within.get("tpr"),
                     fpr_heldout=m["fpr_heldout"], fpr_hard=m["fpr_hard"], **extra))
  return rows
