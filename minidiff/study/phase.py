"""The phase diagram of memorization against the number of training images n.

Two laws of small-data diffusion training, measured on one UNet with the memorization monitor
(minidiff/train/monitor.py) on:
  * Gu et al. ("On Memorization in Diffusion Models"): the memorization ratio — the share of
    samples with ‖x̂ − NN₁‖/‖x̂ − NN₂‖ < 1/3 — falls as n grows (with class conditioning raising it);
  * Bonnaire et al. (NeurIPS 2025): the training time at which memorization sets in, τ_mem, grows
    linearly with n.

For every arm (ARMS: class-conditional, unconditional) and every n the same UNet is trained on n
unique images (n/10 per class, nothing duplicated) with the monitor every `monitor_every` steps.
A finished run is reused (the trainer resumes or returns at once), so `run_phase_diagram` picks up
where a killed call stopped. Per run it reports the final and the best (over monitored steps, as
Gu et al. report) memorization ratio and τ_mem at each level of monitor.TAU_LEVELS (the first
monitored step above it: known to within one interval, None when never reached in `steps`); per
arm and level a least-squares line τ_mem = a + b·n over the runs that reached it, with R².
Writes results.json and one PNG per law (memorization_vs_n.png, tau_mem_vs_n.png), and the
monitor curves of every run (curves.png).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from minidiff.train import monitor
from minidiff.train import trainer

log = logging.getLogger(__name__)

# arm → (p_uncond of training, guidance weight of the monitor's sampler, what it is). The trainer
# always trains a class-conditional UNet; an unconditional model is one whose condition is dropped
# from almost every example (p_uncond < 1 is required), sampled from its null branch (w = 0).
ARMS: dict[str, tuple[float, float, str]] = {
    "class": (0.1, 1.0, "class-conditional (p_uncond 0.1), sampled conditionally (w = 1)"),
    "uncond": (0.99, 0.0, "unconditional (condition dropped from 99% of examples), null branch (w = 0)"),
}
RUN_INFO = "phase_run.json"  # a run's accumulated training wall time, in its workdir


@dataclasses.dataclass(frozen=True)
class PhaseSettings:
  """What the phase diagram trains: the same UNet and schedule at every n."""

  ns: tuple[int, ...] = (20, 40, 80)  # training images (multiples of 10: n/10 per class)
  arms: tuple[str, ...] = ("class",)
  steps: int = 2000
  batch_size: int = 32
  lr: float = 2e-3
  ema_decay: float = 0.99  # a short EMA (~100 steps), so that τ_mem is not the EMA's lag
  warmup_steps: int = 100
  monitor_every: int = 50
  num_samples: int = 40  # monitor samples per check (a rate near 50% is ±15 points at 40)
  num_steps: int = 20  # DDIM steps per check
  resolution: int = 8
  base_channels: int = 16
  seed: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the setting, before anything is trained."""
    bad = [n for n in self.ns if n < 20 or n % 10]
    if bad or not self.ns:
      raise ValueError(f"ns={self.ns}: every n must be a multiple of 10 and ≥ 20 (n/10 images per "
                       f"class, and the ratio test needs 2 per class); e.g. 20,40,80.")
    unknown = [a for a in self.arms if a not in ARMS]
    if unknown or not self.arms:
      raise ValueError(f"arms={self.arms}: choose from {sorted(ARMS)}.")
    if self.monitor_every < 1 or self.steps < self.monitor_every:
      raise ValueError(f"monitor_every={self.monitor_every} must lie in [1, steps={self.steps}].")


def run_config(base: ml_collections.ConfigDict, settings: PhaseSettings, *, n: int,
               arm: str) -> ml_collections.ConfigDict:
  """`base` (e.g. configs/mnist_dup.py) trained on n unique images, nothing duplicated, monitored."""
  p_uncond, w, _ = ARMS[arm]
  s = settings
  c = base.copy_and_resolve_references()
  c.seed = s.seed
  c.data.update(dict(resolution=s.resolution, n_unique_per_class=n // 10, num_duplicated_per_class=0,
                     dup_factor=1, dup_fraction=0.0, duplicated_classes=(),
                     n_unique_per_duplicated_class=0))
  c.model.update(dict(base_channels=s.base_channels, channel_mults=(1, 2),
                      attention_resolutions=(s.resolution // 2,)))
  c.train.update(dict(steps=s.steps, batch_size=s.batch_size, lr=s.lr, p_uncond=p_uncond,
                      ema_decay=s.ema_decay,
                      warmup_steps=s.warmup_steps, log_every=s.monitor_every,
                      checkpoint_every=max(s.monitor_every, s.steps // 4)))
  c.monitor = ml_collections.ConfigDict(dict(
      every=s.monitor_every, num_samples=s.num_samples, num_steps=s.num_steps, w=w,
      stop_copy_rate=1.0, class_accuracy=False))
  return c


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float] | None:
  """Least-squares y = intercept + slope·x with R² = 1 − SS_res/SS_tot; None below 2 points.

  R² needs 3 points to mean anything (2 points give 1); `n_points` says how many there were.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or np.ptp(x) == 0:
    return None
  slope, intercept = np.polyfit(x, y, 1)
  residual = y - (intercept + slope * x)
  ss_tot = float(np.sum((y - y.mean()) ** 2))
  r2 = 1.0 - float(np.sum(residual**2)) / ss_tot if ss_tot > 0 else 1.0
  return dict(slope=float(slope), intercept=float(intercept), r2=r2, n_points=int(len(x)))


def summarize_run(workdir: str, *, levels: Sequence[float] = monitor.TAU_LEVELS,
                  train_steps: int | None = None) -> dict[str, Any]:
  """One run's monitor curve, final and best memorization ratio and τ_mem per level; `finished`
  says whether it reached `train_steps` (an unfinished run's τ_mem None means "not by final_step")."""
  steps, values = monitor.read_curve(os.path.join(workdir, "metrics.jsonl"))
  if not len(steps):
    raise ValueError(f"{workdir} has no monitored step: train it with config.monitor.every ≥ 1.")
  rate = values["copy_rate"]
  info_path = os.path.join(workdir, RUN_INFO)
  info = json.load(open(info_path)) if os.path.exists(info_path) else {}
  return dict(workdir=workdir, steps=steps.tolist(), copy_rate=rate.tolist(),
              final_step=int(steps[-1]), final_copy_rate=float(rate[-1]),
              best_copy_rate=float(rate.max()), best_step=int(steps[int(rate.argmax())]),
              tau_mem={str(lv): monitor.tau_mem(steps, rate, lv) for lv in levels},
              train_wall_s=info.get("wall_s"), train_cpu_s=info.get("cpu_s"),
              finished=train_steps is None or int(steps[-1]) >= train_steps)


def null_branch_copy_rate(workdir: str) -> dict[str, Any]:
  """The memorization ratio of a class run's null branch (w = 0) at its last checkpoint, on the
  monitor's noises: the "unconditional" half of a CFG-trained model. Cached in the workdir.

  Not Gu et al.'s unconditional model: that one trains every example without a label; this branch
  saw the null label on p_uncond = 10% of the examples only.
  """
  path = os.path.join(workdir, "phase_null_branch.json")
  if os.path.exists(path):
    return json.load(open(path))
  from flax import nnx
  from minidiff import config as config_lib
  from minidiff.train import inputs, state
  config = config_lib.load_workdir_config(workdir)
  config.monitor.w = 0.0
  model, step = state.load_ema_model(workdir, config)
  graphdef, params = nnx.split(model, nnx.Param)
  subset = inputs.load_training_data(config)
  conds, null = inputs.training_conditions(config, subset)
  values = monitor.Monitor(config, graphdef, subset, conds, null)(params)
  out = dict(step=int(step), copy_rate=values["copy_rate"])
  with open(path + ".tmp", "w") as f:
    json.dump(out, f)
  os.replace(path + ".tmp", path)
  return out


def _train(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains (or resumes, or reuses) one run, adding the wall and CPU time spent to workdir/RUN_INFO
  (this process's CPU time: on a shared machine the wall time says more about the neighbours)."""
  t0, c0 = time.perf_counter(), time.process_time()
  trainer.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, RUN_INFO)
  before = json.load(open(path)) if os.path.exists(path) else dict(wall_s=0.0, cpu_s=0.0)
  with open(path + ".tmp", "w") as f:
    json.dump(dict(wall_s=before["wall_s"] + time.perf_counter() - t0,
                   cpu_s=before["cpu_s"] + time.process_time() - c0), f)
  os.replace(path + ".tmp", path)


def run_phase_diagram(base: ml_collections.ConfigDict, settings: PhaseSettings, *, workroot: str,
                      outdir: str) -> dict[str, Any]:
  """Trains every (n, arm) run under `workroot` (reusing finished ones), then writes the results.

  Runs go in order of n, arms alternating, so a partial diagram covers the small n of every arm.
  Returns the results dict that is written to outdir/results.json.
  """
  settings.validate()
  os.makedirs(outdir, exist_ok=True)
  for n in sorted(settings.ns):
    for arm in settings.arms:
      workdir = os.path.join(workroot, f"{arm}_n{n}")
      log.info("Phase diagram: %s, n = %d → %s", arm, n, workdir)
      _train(run_config(base, settings, n=n, arm=arm), workdir)
  return write_results(settings, workroot=workroot, outdir=outdir)


def write_results(settings: PhaseSettings, *, workroot: str, outdir: str,
                  null_branch: bool = False) -> dict[str, Any]:
  """results.json and the figures from the runs under `workroot` (those that exist); with
  `null_branch`, also each finished class run's null-branch ratio (`null_branch_copy_rate`)."""
  os.makedirs(outdir, exist_ok=True)
  arms = {}
  for arm in settings.arms:
    runs = {}
    for n in sorted(settings.ns):
      workdir = os.path.join(workroot, f"{arm}_n{n}")
      if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        runs[str(n)] = summarize_run(workdir, train_steps=settings.steps)
        if null_branch and arm == "class" and runs[str(n)]["final_step"] >= settings.steps:
          runs[str(n)]["null_branch"] = null_branch_copy_rate(workdir)
    fits = {}
    for level in monitor.TAU_LEVELS:
      pts = [(int(n), r["tau_mem"][str(level)]) for n, r in runs.items()
             if r["tau_mem"][str(level)] is not None]
      fits[str(level)] = dict(linear_fit([p[0] for p in pts], [p[1] for p in pts]) or {},
                              censored_n=[int(n) for n, r in runs.items()
                                          if r["tau_mem"][str(level)] is None])
    arms[arm] = dict(description=ARMS[arm][2], runs=runs, tau_fit=fits)
  results = dict(
      settings=dataclasses.asdict(settings),
      metric="memorization ratio: share of monitor samples with ‖x̂ − NN₁‖/‖x̂ − NN₂‖ < 1/3 against "
             "the n training images (Gu et al.)",
      tau_mem=f"first monitored step with memorization ratio > level; resolution ±"
              f"{settings.monitor_every} steps (the monitor interval); None: not within "
              f"{settings.steps} steps (censored, left out of the fit)",
      levels=list(monitor.TAU_LEVELS), arms=arms,
      total_train_wall_s=sum(r["train_wall_s"] or 0.0 for a in arms.values() for r in a["runs"].values()),
      total_train_cpu_s=sum(r["train_cpu_s"] or 0.0 for a in arms.values() for r in a["runs"].values()))
  tmp = os.path.join(outdir, "results.json.tmp")
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, os.path.join(outdir, "results.json"))
  plot_results(results, outdir)
  return results


def plot_results(results: dict[str, Any], outdir: str) -> list[str]:
  """memorization_vs_n.png (Gu et al.), tau_mem_vs_n.png (Bonnaire et al.), curves.png."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  colors = {"class": "tab:red", "uncond": "tab:blue"}
  paths = []

  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for arm, a in results["arms"].items():
    ns = [int(n) for n in a["runs"]]
    if not ns:
      continue
    ax.plot(ns, [r["final_copy_rate"] for r in a["runs"].values()], "o-", color=colors.get(arm),
            label=f"{arm}: final")
    ax.plot(ns, [r["best_copy_rate"] for r in a["runs"].values()], "^:", color=colors.get(arm),
            alpha=0.6, label=f"{arm}: best over checks")
    nulls = [(int(n), r["null_branch"]["copy_rate"]) for n, r in a["runs"].items() if "null_branch" in r]
    if nulls:
      ax.plot(*zip(*nulls), "s--", color="tab:gray", label=f"{arm}: its null branch (w = 0), final")
  ax.set_xscale("log", base=2)
  all_ns = sorted({int(n) for a in results["arms"].values() for n in a["runs"]})
  ax.set_xticks(all_ns, [str(n) for n in all_ns])
  ax.minorticks_off()
  ax.set_xlabel("training images n")
  ax.set_ylabel("memorization ratio")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f"Memorization against n after {results['settings']['steps']} steps (Gu et al.)",
               fontsize=9)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "memorization_vs_n.png")))
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  markers = {"0.1": "o", "0.5": "s"}
  for arm, a in results["arms"].items():
    for level, fit in a["tau_fit"].items():
      pts = [(int(n), r["tau_mem"][level]) for n, r in a["runs"].items() if r["tau_mem"][level] is not None]
      if not pts:
        continue
      x, y = np.asarray(pts).T
      label = f"{arm}, level {level}"
      if fit.get("slope") is not None:
        label += f": {fit['slope']:.1f}·n + {fit['intercept']:.0f}, R² {fit['r2']:.2f}"
        grid = np.linspace(0, x.max() * 1.05, 50)
        ax.plot(grid, fit["intercept"] + fit["slope"] * grid, "-", color=colors.get(arm), alpha=0.4)
      ax.plot(x, y, markers.get(level, "o"), color=colors.get(arm), label=label)
  ax.axhline(results["settings"]["steps"], color="gray", ls=":", lw=1)
  ax.set_xlabel("training images n")
  ax.set_ylabel("τ_mem (training steps)")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax.set_title(f"Onset of memorization τ_mem (Bonnaire et al.); ±{results['settings']['monitor_every']} "
               f"steps", fontsize=9)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "tau_mem_vs_n.png")))
  plt.close(fig)

  arms = list(results["arms"].items())
  fig, axes = plt.subplots(1, len(arms), figsize=(5 * len(arms), 3.4), squeeze=False)
  for ax, (arm, a) in zip(axes[0], arms):
    cmap = plt.get_cmap("viridis")
    for i, (n, r) in enumerate(a["runs"].items()):
      ax.plot(r["steps"], r["copy_rate"], "-", color=cmap(i / max(1, len(a["runs"]) - 1)), label=f"n = {n}")
    ax.set_title(a["description"], fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("memorization ratio")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(outdir, "curves.png")))
  plt.close(fig)
  return paths


def _save(fig, path: str) -> str:
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  return path
