"""Statistics whose unit is what varies independently: memorized images and noises, not samples.

Samples drawn for one memorized image, from noises that every arm and every training seed reuses,
are correlated. So, from results.json's per-sample flags:

  * a rate is a weighted mean over the rows (one row = one noise, its flags averaged over the
    seeds), and its interval comes from a two-stage cluster bootstrap (`stats.cluster_weights`):
    clusters = the image the condition names (memorized conditions) or the requested class
    (the rest), then noises within each drawn cluster;
  * a paired difference (arm − baseline) has the same bootstrap interval and a sign-flip
    randomisation p-value over noises (each noise's difference summed over the seeds), and the
    direction of every seed beside it;
  * "equal alignment" is a rule fixed before any run: the CFG family's copy rate interpolated
    (piecewise linear in alignment, over the CFG arms sorted by alignment; CFG arms of equal
    alignment count once, with the lowest copy rate among them) at the arm's alignment;
    Δ = arm's copy rate − that value, bootstrap interval and p from the same resamples, and the
    same rule on each seed alone for its direction ("?": outside that seed's curve). Arms
    outside the CFG curve's alignment range get no comparison.
Holm's correction is applied within each question by `minidiff.study.summary`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from minidiff.metrics import stats

NUM_RESAMPLES = 2000
CONFIDENCE = 0.95
_OTHER = 1_000_000  # cluster ids of rows that name no image: offset + requested class


def _mask(text: str) -> np.ndarray:
  return np.frombuffer(text.encode(), np.uint8) == ord("1")


@dataclasses.dataclass(frozen=True)
class Units:
  """The rows shared by every seed, their clusters, group masks and the bootstrap weights."""

  clusters: np.ndarray  # [N]
  groups: dict  # name → [N] bool ("all" included)
  weights: np.ndarray  # [B, N]
  n_seeds: int


def units(results: dict, *, num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> Units:
  """The study's units; raises ValueError if the seeds were sampled on different conditions."""
  first = results["seeds"][0]["conditions"]
  for s in results["seeds"][1:]:
    c = s["conditions"]
    if any(c.get(k) != first.get(k) for k in ("target_image", "requested_class", "groups_mask")):
      raise ValueError("The seeds of this study were sampled on different conditions: their rows "
                       "are not the same units; study them separately.")
  arm0 = next(iter(results["seeds"][0]["arms"].values()))
  n = len(next(iter(arm0["flags"].values())))
  # Older results.json files lack the named images: each row is then its own cluster.
  target = np.asarray(first.get("target_image", [-1] * n), np.int64)
  requested = np.asarray(first.get("requested_class", np.arange(n)), np.int64)
  clusters = np.where(target >= 0, target, _OTHER + requested)
  groups = {"all": np.ones(len(target), bool)}
  groups.update({g: _mask(m) for g, m in first.get("groups_mask", {}).items()})
  return Units(clusters=clusters, groups=groups, n_seeds=len(results["seeds"]),
               weights=stats.cluster_weights(clusters, num_resamples=num_resamples, seed=seed))


def flag_matrix(results: dict, label: str, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
  """([S, N] float flags of `metric` for arm `label`, [N] bool rows where it applies), or None."""
  rows, applies = [], None
  for s in results["seeds"]:
    flags = s["arms"][label]["flags"]
    if metric not in flags:
      return None
    f = flags[metric]
    rows.append(_mask(f) if isinstance(f, str) else np.asarray(f, bool))
    mask = s.get("applies", {}).get(metric)
    here = _mask(mask) if mask is not None else np.ones(len(rows[-1]), bool)
    applies = here if applies is None else applies & here
  return np.stack(rows).astype(np.float64), applies


def _interval(replicates: np.ndarray) -> list[float]:
  alpha = (1.0 - CONFIDENCE) / 2.0
  ok = replicates[np.isfinite(replicates)]
  return [float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha))] if ok.size else [None, None]


def _weighted(weights: np.ndarray, values: np.ndarray, where: np.ndarray) -> np.ndarray:
  den = weights @ where.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (weights @ (values * where)) / den


def rate(results: dict, u: Units, label: str, group: str, metric: str) -> dict[str, Any] | None:
  """The pooled rate over seeds with its two-stage cluster-bootstrap interval."""
  got = flag_matrix(results, label, metric)
  if got is None:
    return None
  y, applies = got
  where = u.groups[group] & applies
  if not where.any():
    return None
  ybar = y.mean(axis=0)
  return dict(rate=float(ybar[where].mean()), ci=_interval(_weighted(u.weights, ybar, where)),
              n_rows=int(where.sum()), n_clusters=int(len(np.unique(u.clusters[where]))),
              n_seeds=u.n_seeds)


def paired(results: dict, u: Units, label: str, baseline: str, group: str, metric: str
           ) -> dict[str, Any] | None:
  """arm − baseline: the difference, its cluster-bootstrap interval, the sign-flip p over
  noises, and each seed's difference and direction."""
  a, b = flag_matrix(results, label, metric), flag_matrix(results, baseline, metric)
  if a is None or b is None:
    return None
  where = u.groups[group] & a[1] & b[1]
  if not where.any():
    return None
  d = a[0] - b[0]  # [S, N]
  dbar = d.mean(axis=0)
  per_seed = [float(x[where].mean()) for x in d]
  return dict(diff=float(dbar[where].mean()), ci=_interval(_weighted(u.weights, dbar, where)),
              p=stats.sign_flip_p(d[:, where].sum(axis=0)), per_seed=per_seed,
              directions="".join("+" if x > 0 else "−" if x < 0 else "0" for x in per_seed),
              n_rows=int(where.sum()), n_clusters=int(len(np.unique(u.clusters[where]))))


def _curve_at(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
  """Piecewise-linear y(x) through the points sorted by x, at `at`; NaN outside [min x, max x];
  points of equal x count once, with their smallest y. x, y: [P, B]; at: [B]."""
  out = np.full(at.shape, np.nan)
  for b in range(at.shape[0]):
    xs = np.unique(x[:, b])  # CFG arms of equal alignment: the least copying one (favours CFG)
    ys = np.asarray([y[x[:, b] == v, b].min() for v in xs])
    if xs[0] <= at[b] <= xs[-1]:
      out[b] = np.interp(at[b], xs, ys)
  return out


def equal_alignment(results: dict, u: Units, label: str, cfg_labels: Sequence[str], *,
                    copy: tuple[str, str], alignment: tuple[str, str]) -> dict[str, Any] | None:
  """The arm's copy rate minus the CFG curve's copy rate at the arm's alignment (module docstring)."""
  def stat(lbl):
    c, al = flag_matrix(results, lbl, copy[1]), flag_matrix(results, lbl, alignment[1])
    if c is None or al is None:
      return None
    wc, wa = u.groups[copy[0]] & c[1], u.groups[alignment[0]] & al[1]
    cbar, abar = c[0].mean(axis=0), al[0].mean(axis=0)
    point = (float(cbar[wc].mean()), float(abar[wa].mean()))
    return point, _weighted(u.weights, cbar, wc), _weighted(u.weights, abar, wa)
  arm = stat(label)
  curve = [stat(c) for c in cfg_labels]
  curve = [c for c in curve if c is not None]
  if arm is None or len(curve) < 2:
    return None
  cx = np.asarray([[c[0][1]] for c in curve])
  cy = np.asarray([[c[0][0]] for c in curve])
  at = _curve_at(cx, cy, np.asarray([arm[0][1]]))[0]
  if not np.isfinite(at):
    return dict(arm=label, alignment=arm[0][1], copy=arm[0][0], cfg_copy_at_alignment=None,
                note="outside the CFG curve's alignment range: no comparison")
  per_seed = []
  for k in range(u.n_seeds):  # the same rule on each seed's flags alone
    def point(lbl):
      c, al = flag_matrix(results, lbl, copy[1]), flag_matrix(results, lbl, alignment[1])
      wc, wa = u.groups[copy[0]] & c[1], u.groups[alignment[0]] & al[1]
      return c[0][k][wc].mean(), al[0][k][wa].mean()
    a_pt, c_pts = point(label), [point(c) for c in cfg_labels
                                 if flag_matrix(results, c, copy[1]) is not None]
    v = _curve_at(np.asarray([[p[1]] for p in c_pts]), np.asarray([[p[0]] for p in c_pts]),
                  np.asarray([a_pt[1]]))[0]
    per_seed.append(float(a_pt[0] - v) if np.isfinite(v) else None)
  directions = "".join("?" if d is None else "+" if d > 0 else "−" if d < 0 else "0"
                       for d in per_seed)
  boot_cfg = _curve_at(np.stack([c[2] for c in curve]), np.stack([c[1] for c in curve]), arm[2])
  delta = arm[1] - boot_cfg
  ok = delta[np.isfinite(delta)]
  p = min(1.0, 2 * min((1 + np.sum(ok <= 0)) / (1 + ok.size), (1 + np.sum(ok >= 0)) / (1 + ok.size)))
  return dict(arm=label, alignment=arm[0][1], copy=arm[0][0], cfg_copy_at_alignment=float(at),
              diff=float(arm[0][0] - at), ci=_interval(delta), p=float(p), per_seed=per_seed,
              directions=directions,
              n_resamples_inside=int(ok.size), cfg_arms=list(cfg_labels))
