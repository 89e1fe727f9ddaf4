"""The study's figures: the frontier plot, labelled sample grids, copies beside what they copy,
and d_t of memorized vs other conditions."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from minidiff.study import plots
from minidiff.study.conditions import ConditionSet

plt = plots.plt
COLOURS = ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink",
           "tab:gray", "tab:olive", "tab:cyan"]


def frontier_plot(results: dict, path: str) -> None:
  """Copy rate on memorized conditions against alignment (left) and against FD (right), one colour
  per family, 95% interval bars, each family's Pareto front as a line, the tolerance band shaded."""
  s = results["summary"]
  arms = s["arms"]
  families = list(dict.fromkeys(r["family"] for r in arms.values()))
  has_fd = any(r["fd"] for r in arms.values())
  fig, axes = plt.subplots(1, 2 if has_fd else 1, figsize=(12 if has_fd else 7, 5), squeeze=False)
  ax = axes[0, 0]
  ref = s["frontier"]["reference"]
  ax.axvspan(100 * (ref["alignment"] - ref["tolerance"]), 100 * ref["alignment"], color="0.9",
             label=f"within {100 * ref['tolerance']:.0f} pts of the best CFG arm")
  for family, colour in zip(families, COLOURS * 3):
    rows = [(label, r) for label, r in arms.items() if r["family"] == family
            and r["copy_memorized"]["rate"] is not None and r["alignment"]["rate"] is not None]
    if not rows:
      continue
    x = np.array([100 * r["alignment"]["rate"] for _, r in rows])
    y = np.array([100 * r["copy_memorized"]["rate"] for _, r in rows])
    xerr = np.abs(np.array([[100 * r["alignment"]["ci"][0], 100 * r["alignment"]["ci"][1]]
                            for _, r in rows]).T - x)
    yerr = np.abs(np.array([[100 * r["copy_memorized"]["ci"][0], 100 * r["copy_memorized"]["ci"][1]]
                            for _, r in rows]).T - y)
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=colour, ms=4, alpha=0.8, lw=0.8,
                label=family)
    front = [arms[n] for n in s["frontier"]["pareto"].get(family, [])]
    if len(front) > 1:
      ax.plot([100 * r["alignment"]["rate"] for r in front],
              [100 * r["copy_memorized"]["rate"] for r in front], "-", color=colour, lw=1.5)
    if has_fd:
      fd_rows = [(label, r) for label, r in rows if r["fd"]]
      axes[0, 1].plot([r["fd"]["mean"] for _, r in fd_rows],
                      [100 * r["copy_memorized"]["rate"] for _, r in fd_rows], "o", color=colour,
                      ms=4, label=family)
  ax.set_xlabel("alignment: class accuracy (%)")
  ax.set_ylabel("copies on memorized conditions (%)")
  ax.set_title(f"memorization–alignment frontier ({s['n_seeds']} seed(s))")
  ax.legend(fontsize=7, loc="best")
  if has_fd:
    floor = [x["fd_floor"]["mean"] for x in results["seeds"] if "fd_floor" in x]
    if floor:
      axes[0, 1].axvline(np.mean(floor), color="0.5", ls="--", label="real-image floor")
    axes[0, 1].set_xlabel("FD to held-out real images (lower is better)")
    axes[0, 1].set_ylabel("copies on memorized conditions (%)")
    axes[0, 1].legend(fontsize=7, loc="best")
  plots.save_figure(fig, path)


def labelled_grid(samples: np.ndarray, titles: Sequence[str], path: str, *,
                  copies: np.ndarray | None = None, ncols: int = 10) -> None:
  """Samples [N, H, W, C] in [−1, 1], each titled with its requested condition; copies framed red."""
  n = len(samples)
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.9, nrows * 1.05), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.set_xticks([]), ax.set_yticks([])
    if i >= n:
      ax.axis("off")
      continue
    img = (np.clip(samples[i], -1, 1) + 1) / 2
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_title(titles[i], fontsize=6)
    if copies is not None and copies[i]:
      for spine in ax.spines.values():
        spine.set_color("red"), spine.set_linewidth(2)
  plots.save_figure(fig, path, dpi=100)


def copy_pairs(samples: np.ndarray, training: np.ndarray, titles: Sequence[str], path: str) -> None:
  """Each copied sample (top) above the training image it copies (bottom)."""
  n = len(samples)
  fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.1), squeeze=False)
  for i in range(n):
    for row, img in ((0, samples[i]), (1, training[i])):
      ax = axes[row, i]
      img = (np.clip(img, -1, 1) + 1) / 2
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([]), ax.set_yticks([])
    axes[0, i].set_title(titles[i], fontsize=6)
  axes[0, 0].set_ylabel("sample", fontsize=7)
  axes[1, 0].set_ylabel("training", fontsize=7)
  plots.save_figure(fig, path, dpi=100)


def _title(conditions: ConditionSet, i: int) -> str:
  if conditions.prompts is not None:
    p = conditions.prompts[i]
    return p if len(p) <= 18 else p[:17] + "…"
  return f"class {int(conditions.requested_class[i])}"


def arm_figures(outdir: str, arms: Sequence, results: Mapping, arm_conditions: Mapping,
                unique_images: np.ndarray, conditions: ConditionSet,
                rows: Mapping[str, dict], *, per_group: int = 20) -> dict[str, str]:
  """Per arm: a grid of memorized and other conditions (labelled, copies framed) and up to 10
  copies beside their training images; d_t of memorized vs other conditions under the first arm
  that records it. Returns title → path relative to the study folder."""
  figs: dict[str, str] = {}
  rel = lambda p: os.path.relpath(p, os.path.dirname(outdir))  # noqa: E731
  mem = conditions.groups["memorized"]
  show = np.concatenate([np.flatnonzero(mem)[:per_group], np.flatnonzero(~mem)[:per_group]])
  for arm in arms:
    r, cs = results[arm.label], arm_conditions[arm.label]
    copies = np.frombuffer(rows[arm.label]["flags"]["copy"].encode(), np.uint8) == ord("1")
    path = os.path.join(outdir, f"{arm.slug}_grid.png")
    labelled_grid(r.samples[show], [_title(cs, i) for i in show], path, copies=copies[show])
    figs[f"{arm.label}: samples (first rows memorized conditions; copies framed red)"] = rel(path)
    idx = np.flatnonzero(copies)[:10]
    if len(idx):
      nn = np.asarray(rows[arm.label]["nn_index"])[idx]
      path = os.path.join(outdir, f"{arm.slug}_copies.png")
      copy_pairs(r.samples[idx], unique_images[nn], [_title(cs, i) for i in idx], path)
      figs[f"{arm.label}: copies beside the training images they copy"] = rel(path)
  ref = next((a for a in arms if np.isfinite(results[a.label].d_eps).all()), None)
  if ref is not None:
    r = results[ref.label]
    path = os.path.join(outdir, "dt_memorized_vs_other.png")
    plots.plot_d_curves(r.t, r.d_eps, r.transition_step, path,
                        title=f"{ref.label}: d_t of memorized vs other conditions",
                        groups={"memorized conditions": mem, "other conditions": ~mem})
    figs[f"d_t under {ref.label}"] = rel(path)
  return figs
