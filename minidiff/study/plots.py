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
                  ylabel: str = "d_t = ‖ε_c − ε_u‖₂") -> None:
  """d [S, B] against the timestep t [S] (sampling runs right to left), transitions as dots.

  `groups` maps a legend name to a boolean mask over the batch (e.g. copies vs non-copies); each
  group gets its own colour, its median curve drawn thick.
  """
  groups = groups or {"samples": np.ones(d.shape[1], bool)}
  fig, ax = plt.subplots(figsize=(7, 4))
  for (name, mask), colour in zip(groups.items(), ["tab:red", "tab:blue", "tab:green", "tab:gray"]):
    idx = np.flatnonzero(mask)
    if not len(idx) or np.all(np.isnan(d[:, idx])):
      continue
    for j in idx[:max_curves]:
      ax.plot(t, d[:, j], color=colour, alpha=0.15, lw=0.8)
      k = transition_step[j]
      if k >= 0:
        ax.plot(t[k], d[k, j], "o", color=colour, ms=3, alpha=0.6)
    ax.plot(t, np.nanmedian(d[:, idx], axis=1), color=colour, lw=2.5, label=f"{name} (n={len(idx)})")
  ax.set_xlim(t.max(), t.min())
  ax.set_xlabel("timestep t (sampling runs →)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(loc="best", fontsize=8)
  save_figure(fig, path)


def plot_transition_hist(t: np.ndarray, transitions: dict[str, np.ndarray], path: str) -> None:
  """Histogram of the transition timestep per strategy (samples that never switched are counted)."""
  fig, ax = plt.subplots(figsize=(7, 4))
  bins = np.linspace(0, max(int(t.max()), 1), 26)
  for name, steps in transitions.items():
    fired = steps[steps >= 0]
    never = int((steps < 0).sum())
    if len(fired):
      ax.hist(t[fired], bins=bins, alpha=0.5, label=f"{name} (never: {never}/{len(steps)})")
  ax.set_xlim(bins[-1], 0)
  ax.set_xlabel("timestep t of the transition")
  ax.set_ylabel("samples")
  ax.legend(fontsize=8)
  save_figure(fig, path)
