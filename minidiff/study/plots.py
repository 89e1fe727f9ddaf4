"""Figures for people: sample grids, d_t curves with transitions, transition histograms."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def save_figure(fig: plt.Figure, path: str, *, dpi: int = 110) -> None:
  """Lays out, writes and closes a matplotlib figure."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def save_grid(images: np.ndarray, path: str, *, ncols: int = 10, scale: int = 2) -> None:
  """Writes images [N, H, W, C] in [−1, 1] as one PNG grid (row-major, ncols per row)."""
  n, h, w, c = images.shape
  nrows = -(-n // ncols)
  canvas = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), np.float32)
  for i, img in enumerate(images):
    r, q = divmod(i, ncols)
    canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = (img + 1) / 2
  pixels = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
  pil = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
  pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST).save(path)


def plot_d_curves(t: np.ndarray, d: np.ndarray, transition_step: np.ndarray, path: str, *,
                  title: str, groups: dict[str, np.ndarray] | None = None, max_curves: int = 40,
                  ylabel: str = "d_t = ‖ε_c − ε_u‖₂", w: np.ndarray | None = None) -> None:
  """d [S, B] against the timestep t [S] (sampling runs right to left), transitions as dots, and
  the applied guidance weight w [S, B] (if given) on a second axis.

  `groups` maps a legend name to a boolean mask over the batch (e.g. copies vs non-copies); each
  group gets its own colour, its median curve drawn thick. When d is NaN throughout (a strategy
  that evaluates one branch records no d), the axes say so instead of staying empty.
  """
  groups = groups or {"samples": np.ones(d.shape[1], bool)}
  fig, ax = plt.subplots(figsize=(7, 4))
  handles = []
  for (name, mask), colour in zip(groups.items(), ["tab:red", "tab:blue", "tab:green", "tab:gray"]):
    idx = np.flatnonzero(mask)
    if not len(idx) or np.all(np.isnan(d[:, idx])):
      continue
    for j in idx[:max_curves]:
      ax.plot(t, d[:, j], color=colour, alpha=0.15, lw=0.8)
      k = transition_step[j]
      if k >= 0:
        ax.plot(t[k], d[k, j], "o", color=colour, ms=3, alpha=0.6)
    handles += ax.plot(t, np.nanmedian(d[:, idx], axis=1), color=colour, lw=2.5,
                       label=f"{name} (n={len(idx)})")
  if not handles:
    ax.text(0.5, 0.5, "no d recorded: this strategy evaluates one branch\n(sample with "
            "compute_d=True to record d_t)", transform=ax.transAxes, ha="center", va="center",
            fontsize=10, color="0.4")
    ax.set_yticks([])
  if w is not None:
    wax = ax.twinx()
    w = np.asarray(w, np.float64)
    varies = np.ptp(w, axis=1).max() > 0 if w.size else False
    if varies:  # per-sample weights (a dynamic transition): a few samples, then the median
      for j in range(min(w.shape[1], 10)):
        wax.plot(t, w[:, j], color="black", alpha=0.15, lw=0.8, drawstyle="steps-mid")
    handles += wax.plot(t, np.median(w, axis=1), color="black", lw=1.5, ls="--", marker=".",
                        ms=4, drawstyle="steps-mid", label="guidance weight w (median)" if varies
                        else "guidance weight w")
    wax.set_ylabel("guidance weight w")
    lo, hi = float(np.min(w)), float(np.max(w))
    pad = max(0.5, 0.1 * (hi - lo))
    wax.set_ylim(lo - pad, hi + pad)
  ax.set_xlim(t.max(), t.min())
  ax.set_xlabel("timestep t (sampling runs →)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if handles:
    ax.legend(handles=handles, loc="best", fontsize=8)
  save_figure(fig, path)


def plot_transition_hist(t: np.ndarray, transitions: dict[str, np.ndarray], path: str) -> None:
  """Histogram of the transition timestep per strategy, bars side by side (none hides another);
  the samples that never switched are counted in the legend."""
  fig, ax = plt.subplots(figsize=(7, 4))
  bins = np.linspace(0, max(int(t.max()), 1), 21)
  data, labels = [], []
  for name, steps in transitions.items():
    fired = steps[steps >= 0]
    data.append(np.asarray(t)[fired])
    labels.append(f"{name} (never: {int((steps < 0).sum())}/{len(steps)})")
  if any(len(x) for x in data):
    ax.hist(data, bins=bins, label=labels, histtype="bar", rwidth=0.9)
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, "no sample switched", transform=ax.transAxes, ha="center", va="center")
  ax.set_xlim(bins[-1], 0)
  ax.set_xlabel("timestep t of the transition (sampling runs →)")
  ax.set_ylabel("samples")
  save_figure(fig, path)
