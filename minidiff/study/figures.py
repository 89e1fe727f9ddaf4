"""The study's figures: the frontier plot, labelled sample grids, copies beside what they copy,
and d_t of memorized vs other conditions."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from minidiff.study import evaluation, plots
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


def grid_rows(conditions: Sequence[str], *, max_per_row: int = 25, max_rows: int = 48,
              first: Sequence[str] = ()) -> tuple[list[tuple[str, list[int]]], int]:
  """The rows of a labelled grid: one condition per row (those in `first`, then the others, each
  in order of first appearance), holding the indices of its samples in order; a condition with
  more than `max_per_row` samples continues on the next row. At most `max_rows` rows are kept.

  Returns ([(label, sample indices)], number of samples shown).
  """
  order = list(dict.fromkeys([c for c in conditions if c in set(first)] + list(conditions)))
  rows = []
  for label in order:
    idx = [i for i, c in enumerate(conditions) if c == label]
    for start in range(0, len(idx), max_per_row):
      rows.append((label, idx[start:start + max_per_row]))
  rows = rows[:max_rows]
  return rows, sum(len(r) for _, r in rows)


def labelled_grid(samples: np.ndarray, conditions: Sequence[str], path: str, *,
                  copies: np.ndarray | None = None, first: Sequence[str] = (),
                  title: str = "", max_per_row: int = 25, max_rows: int = 48,
                  pixels: int = 48) -> dict:
  """Samples [N, H, W, C] in [−1, 1] as a grid with one condition per row, labelled on the left
  (`grid_rows`); copies framed red. Each image is drawn `pixels` px wide (integer upscaling).
  The title says what is shown: all N samples, or which subset.

  Returns {"shown": n, "total": N, "rows": number of rows}.
  """
  n, h, w, c = samples.shape
  rows, shown = grid_rows(conditions, max_per_row=max_per_row, max_rows=max_rows, first=first)
  scale = max(1, pixels // max(h, w))
  ch, cw, gap = h * scale, w * scale, 4
  ncols = max(len(r) for _, r in rows)
  canvas = np.ones((len(rows) * (ch + gap) + gap, ncols * (cw + gap) + gap, 3), np.float32)
  for r, (_, idx) in enumerate(rows):
    for q, i in enumerate(idx):
      y, x = gap + r * (ch + gap), gap + q * (cw + gap)
      img = (np.clip(samples[i], -1, 1) + 1) / 2
      img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
      canvas[y:y + ch, x:x + cw] = img if c == 3 else img[..., :1]
      if copies is not None and copies[i]:  # a red frame in the gap around the image
        canvas[y - 2:y, x - 2:x + cw + 2] = canvas[y + ch:y + ch + 2, x - 2:x + cw + 2] = (1, 0, 0)
        canvas[y - 2:y + ch + 2, x - 2:x] = canvas[y - 2:y + ch + 2, x + cw:x + cw + 2] = (1, 0, 0)
  subset = (f"all {n} samples" if shown == n else
            f"{shown} of {n} samples (the first {max_rows} rows of ≤ {max_per_row})")
  framed = ("red frame: a copy of a training image (calibrated metric)" if copies is not None
            else "")
  heading = [x for x in (title, subset, framed) if x]
  dpi = 100
  label_in = 0.08 * max(len(lbl) for lbl, _ in rows) + 0.3
  width = max(canvas.shape[1] / dpi + label_in, 0.075 * max(len(x) for x in heading) + 0.2)
  top = 0.18 * len(heading) + 0.15
  fig = plt.figure(figsize=(width, canvas.shape[0] / dpi + 0.1 + top), dpi=dpi)
  ax = fig.add_axes([label_in / fig.get_figwidth(), 0.1 / fig.get_figheight(),
                     canvas.shape[1] / dpi / fig.get_figwidth(), canvas.shape[0] / dpi / fig.get_figheight()])
  ax.imshow(canvas, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([gap + r * (ch + gap) + ch / 2 for r in range(len(rows))])
  ax.set_yticklabels([lbl for lbl, _ in rows], fontsize=8)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  fig.text(0.1 / width, 1 - 0.08 / fig.get_figheight(), "\n".join(heading), fontsize=9, va="top")
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return dict(shown=int(shown), total=int(n), rows=len(rows))


def copy_pairs(samples: np.ndarray, training: np.ndarray, titles: Sequence[str], path: str, *,
               bottom: str = "training") -> None:
  """Each sample (top) above a training image (bottom: the one it copies, or its nearest)."""
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
  axes[1, 0].set_ylabel(bottom, fontsize=7)
  plots.save_figure(fig, path, dpi=100)


def copy_audit(samples: np.ndarray, unique_images: np.ndarray, row: Mapping, memorized: np.ndarray,
               path: str, *, num: int = 20, seed: int = 0) -> np.ndarray:
  """`num` random memorized-condition samples (top) above their nearest training image by pixel
  L2 (bottom), titled with the copy metric's score (the registry's copy role and its `score`) and
  its flag, so a reader can check the metric by eye. Returns the indices shown."""
  rng = np.random.default_rng(seed)
  pool = np.flatnonzero(memorized)
  idx = np.sort(rng.choice(pool, min(num, len(pool)), replace=False))
  metric = evaluation.by_role("copy")
  flag = np.frombuffer(row["flags"][metric.name].encode(), np.uint8) == ord("1")
  score = row["scores"][metric.score]
  nn = np.asarray(row["nn_index"])
  titles = [f"{score[i]:.3f}\n{'COPY' if flag[i] else 'no'}" if score[i] is not None else "—"
            for i in idx]
  copy_pairs(samples[idx], unique_images[nn[idx]], titles, path, bottom="nearest")
  return idx


def framed_copies(row: Mapping) -> tuple[np.ndarray, np.ndarray]:
  """([N] bool, [N] int) of an arm's results.json row: the samples flagged by any registered copy
  metric that names the image it copies (`Metric.image`), and that image (the first such metric,
  in registry order, that flags the sample; the nearest training image elsewhere)."""
  nn = np.asarray(row["nn_index"])
  scores = row.get("scores", {})
  copies, copied = np.zeros(len(nn), bool), nn.copy()
  framing = [m for m in evaluation.METRICS.values()
             if m.image is not None and m.name in row["flags"] and m.image in scores]
  for m in reversed(framing):  # the first metric in registry order wins
    flag = np.frombuffer(row["flags"][m.name].encode(), np.uint8) == ord("1")
    copies |= flag
    copied = np.where(flag, np.asarray(scores[m.image]), copied)
  return copies, copied


def _title(conditions: ConditionSet, i: int, *, width: int = 18) -> str:
  if conditions.prompts is not None:
    p = conditions.prompts[i]
    return p if len(p) <= width else p[:width - 1] + "…"
  return f"class {int(conditions.requested_class[i])}"


def arm_figures(outdir: str, arms: Sequence, results: Mapping, arm_conditions: Mapping,
                unique_images: np.ndarray, conditions: ConditionSet,
                rows: Mapping[str, dict]) -> dict[str, str]:
  """Per arm: a grid of every sample, one condition per row (memorized conditions first, labelled,
  copies framed), up to 10 copies beside their training images, and d_t with the applied w(t);
  d_t of memorized vs other conditions under the first arm that records it. Returns title → path
  relative to the study folder."""
  figs: dict[str, str] = {}
  rel = lambda p: os.path.relpath(p, os.path.dirname(outdir))  # noqa: E731
  mem = conditions.groups["memorized"]
  for arm in arms:
    r, cs = results[arm.label], arm_conditions[arm.label]
    copies, copied = framed_copies(rows[arm.label])
    scores = rows[arm.label].get("scores", {})
    labels = [_title(cs, i, width=40) + (" (memorized)" if mem[i] else "") for i in range(len(cs))]
    path = os.path.join(outdir, f"{arm.slug}_grid.png")
    shown = labelled_grid(r.samples, labels, path, copies=copies, title=arm.label,
                          first=[lbl for lbl, m in zip(labels, mem) if m])
    what = "all" if shown["shown"] == shown["total"] else f"{shown['shown']} of {shown['total']}"
    figs[f"{arm.label}: {what} samples, one condition per row (memorized first; copies framed red)"] = rel(path)
    idx = np.flatnonzero(copies)[:10]
    if len(idx):
      path = os.path.join(outdir, f"{arm.slug}_copies.png")
      copy_pairs(r.samples[idx], unique_images[copied[idx]], [_title(cs, i) for i in idx], path)
      figs[f"{arm.label}: copies beside the training images they copy"] = rel(path)
    audited = evaluation.by_role("copy")
    if audited.score in scores and audited.name in rows[arm.label]["flags"] and mem.any():
      path = os.path.join(outdir, f"{arm.slug}_audit.png")
      copy_audit(r.samples, unique_images, rows[arm.label], mem, path, seed=0)
      figs[f"{arm.label}: copy audit, 20 random memorized-condition samples"] = rel(path)
    path = os.path.join(outdir, f"{arm.slug}_dt.png")
    plots.plot_d_curves(r.t, r.d_eps, r.transition_step, path, w=r.w,
                        title=f"{arm.label}: d_t and the guidance weight w(t)",
                        groups={"memorized conditions": mem, "other conditions": ~mem})
    figs[f"{arm.label}: d_t and w(t)"] = rel(path)
  ref = next((a for a in arms if np.isfinite(results[a.label].d_eps).all()), None)
  if ref is not None:
    r = results[ref.label]
    path = os.path.join(outdir, "dt_memorized_vs_other.png")
    plots.plot_d_curves(r.t, r.d_eps, r.transition_step, path, w=r.w,
                        title=f"{ref.label}: d_t of memorized vs other conditions",
                        groups={"memorized conditions": mem, "other conditions": ~mem})
    figs[f"d_t under {ref.label}"] = rel(path)
  return figs
