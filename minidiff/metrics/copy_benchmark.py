"""A copy-detection benchmark with known answers, built from the data itself.

Positives are training images under what a sampler does to them — Gaussian noise at several
levels, blur, contrast, gamma, brightness with clipping, colour saturation (RGB only), ±1-pixel
shifts — plus any extra positives a caller brings (the model's own reconstructions of its
training images, `minidiff.study.copy_benchmark`). Negatives are real held-out images that no
model trained on (split in two: one half sets each score's threshold at ≤ 1% false positives, the
other measures it, including the hardest ones, each training image's nearest held-out images),
plus any extra negatives a caller brings (samples of a model trained without duplication, scored
against the image the duplicated model memorized).

For every score of `copy_detection.SCORE_NAMES` and class: ROC-AUC, the threshold, TPR at it
(a positive counts only when compared with its own source image), the measured false-positive
rates, and TPR by corruption kind and strength. Pure numpy on arrays: no model, no study.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from minidiff.metrics import copy_detection as cd
from minidiff.metrics import detection, memorization

# kind → strengths: noise σ (pixels in [−1, 1]), blur σ (pixels), contrast factor, gamma,
# brightness offset (then clipped to [−1, 1]), saturation factor (RGB), shift (pixels, 4 ways).
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "noise": (0.05, 0.1, 0.2, 0.3),
    "blur": (0.5, 0.75, 1.0),
    "contrast": (0.6, 0.8, 1.25),
    "gamma": (0.6, 0.8, 1.25, 1.6),
    "brightness_clip": (-0.3, 0.3),
    "saturation": (0.5, 1.5),
    "shift": (1.0,),
}
HARD_NEIGHBOURS = 3  # per training image, its nearest held-out images are the hard negatives


@dataclasses.dataclass(frozen=True)
class Positives:
  """Known copies: images [P, H, W, C], the training image each copies (`source` [P]), and how."""

  images: np.ndarray
  source: np.ndarray
  kind: tuple[str, ...]
  strength: np.ndarray  # [P] float

  def __len__(self) -> int:
    return int(self.source.shape[0])


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
  radius = max(1, int(math.ceil(3 * sigma)))
  x = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (x / sigma) ** 2)
  kernel /= kernel.sum()
  out = images
  for axis in (1, 2):  # separable: rows then columns, edge values repeated
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    padded = np.pad(out, pad, mode="edge")
    n = out.shape[axis]
    out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
  return out


def corrupt(images: np.ndarray, kind: str, strength: float, *, rng: np.random.Generator
            ) -> list[np.ndarray]:
  """`images` [N, H, W, C] in [−1, 1] under one corruption; a list (shifts give four), clipped."""
  if kind == "noise":
    outs = [images + strength * rng.standard_normal(images.shape)]
  elif kind == "blur":
    outs = [_blur(images, strength)]
  elif kind == "contrast":
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    outs = [mean + strength * (images - mean)]
  elif kind == "gamma":
    outs = [2.0 * ((images + 1.0) / 2.0).clip(0, 1) ** strength - 1.0]
  elif kind == "brightness_clip":
    outs = [images + strength]
  elif kind == "saturation":
    if images.shape[-1] != 3:
      return []
    grey = images.mean(axis=-1, keepdims=True)
    outs = [grey + strength * (images - grey)]
  elif kind == "shift":
    s = int(strength)
    outs = [cd.shifted(images, dy, dx) for dy, dx in ((s, 0), (-s, 0), (0, s), (0, -s))]
  else:
    raise ValueError(f"Unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}.")
  return [np.clip(o, -1.0, 1.0).astype(np.float32) for o in outs]


def corrupted_positives(unique_images: np.ndarray, sources: np.ndarray, *, seed: int = 0,
                        corruptions: Mapping[str, Sequence[float]] = CORRUPTIONS) -> Positives:
  """Every corruption of every training image in `sources` (indices into `unique_images`)."""
  rng = np.random.default_rng(seed)
  base = np.asarray(unique_images, np.float32)[sources]
  images, source, kind, strength = [], [], [], []
  for k, levels in corruptions.items():
    for s in levels:
      for out in corrupt(base, k, s, rng=rng):
        images.append(out)
        source.append(sources)
        kind += [k] * len(sources)
        strength.append(np.full(len(sources), s))
  return Positives(np.concatenate(images), np.concatenate(source).astype(np.int64), tuple(kind),
                   np.concatenate(strength))


def merge(*parts: Positives) -> Positives:
  return Positives(np.concatenate([p.images for p in parts]),
                   np.concatenate([p.source for p in parts]),
                   tuple(k for p in parts for k in p.kind), np.concatenate([p.strength for p in parts]))


def choose_sources(labels: np.ndarray, is_duplicated: np.ndarray, *, per_class: int,
                   seed: int = 0) -> np.ndarray:
  """The duplicated images and `per_class` random unique images of every class (sorted)."""
  rng = np.random.default_rng(seed)
  chosen = [np.flatnonzero(is_duplicated)]
  for c in np.unique(labels):
    members = np.flatnonzero((labels == c) & ~is_duplicated)
    chosen.append(rng.choice(members, min(per_class, len(members)), replace=False))
  return np.unique(np.concatenate(chosen))


@dataclasses.dataclass(frozen=True)
class ExtraNegatives:
  """Generated non-copies: images [G, ...] with the class each was asked for and the training image
  it must not be mistaken for (`target` [G], the image a duplicated model memorized; −1: none)."""

  images: np.ndarray
  labels: np.ndarray
  target: np.ndarray


def _scores(images, unique_images, target, features_fn, unique_features):
  feats = features_fn(images) if features_fn is not None else None
  return cd.score_samples(images, unique_images, target=target, features=feats,
                          unique_features=unique_features)


def _rate(flags: np.ndarray) -> float | None:
  return float(np.mean(flags)) if len(flags) else None


def run_benchmark(unique_images: np.ndarray, labels: np.ndarray, is_duplicated: np.ndarray,
                  heldout_images: np.ndarray, heldout_labels: np.ndarray, *,
                  positives: Positives, extra_negatives: Mapping[str, ExtraNegatives] = {},
                  features_fn=None, fpr: float = cd.DEFAULT_FPR, seed: int = 0,
                  copy_distance: Mapping[int, float] | None = None,
                  scores: Sequence[str] = cd.SCORE_NAMES) -> dict:
  """Scores every candidate metric on the known answers (JSON-ready; see the module docstring).

  Args:
    unique_images, labels, is_duplicated: the de-duplicated training set [U, ...], [U], [U].
    heldout_images, heldout_labels: real images no model trained on [H, ...], [H].
    positives: known copies (`corrupted_positives`, reconstructions, `merge`d).
    extra_negatives: named sets of generated non-copies.
    features_fn: images → classifier features (enables `feature_cosine`), or None.
    copy_distance: class → L2 distance of the model's own copies to their image; TPR is also
      reported on the positives no further from their source than that.
  """
  labels = np.asarray(labels)
  num_classes = int(max(labels.max(), np.max(heldout_labels)) + 1)
  rng = np.random.default_rng(seed)
  fold = rng.permutation(len(heldout_labels)) % 2  # 0: calibration half, 1: measured half
  unique_features = features_fn(unique_images) if features_fn is not None else None
  if features_fn is None:
    scores = [s for s in scores if s != "feature_cosine"]
  # Nearest scores: every image against the whole training set. Named scores: a positive against
  # its source, a negative against every source of its class (one threshold per source image).
  pos = _scores(positives.images, unique_images, positives.source, features_fn, unique_features)
  neg = _scores(heldout_images, unique_images, None, features_fn, unique_features)
  hard = np.zeros(len(heldout_labels), bool)
  _, near = memorization.nearest_neighbours(unique_images, heldout_images, k=HARD_NEIGHBOURS)
  hard[np.unique(near)] = True
  pos_dist = np.linalg.norm((positives.images - np.asarray(unique_images)[positives.source]
                             ).reshape(len(positives), -1), axis=1)
  pos_class = labels[positives.source]
  extra = {name: _scores(e.images, unique_images, e.target, features_fn, unique_features)
           for name, e in extra_negatives.items()}
  out = dict(fpr=fpr, n_positives=len(positives), n_heldout=int(len(heldout_labels)),
             n_heldout_hard=int(hard.sum()), n_sources=int(len(np.unique(positives.source))),
             num_classes=num_classes, corruptions={k: list(v) for k, v in CORRUPTIONS.items()},
             positive_kinds=sorted(set(positives.kind)),
             positive_distance={k: _quantiles(pos_dist[np.asarray(positives.kind) == k])
                                for k in sorted(set(positives.kind))},
             copy_distance=({str(c): float(d) for c, d in copy_distance.items()}
                            if copy_distance else None),
             extra_negatives={k: int(len(e.labels)) for k, e in extra_negatives.items()},
             metrics={})
  for name in scores:
    if name in cd.NAMED:
      row = _named_metric(name, unique_images, labels, heldout_images, heldout_labels, fold, hard,
                          positives, pos, pos_dist, pos_class, extra_negatives, extra, fpr,
                          num_classes, copy_distance)
    else:
      row = _nearest_metric(name, labels, heldout_labels, fold, hard, positives, pos, neg,
                            pos_dist, pos_class, extra_negatives, extra, fpr, num_classes,
                            copy_distance)
    row["description"] = cd.DESCRIPTIONS[name]
    out["metrics"][name] = row
  return out


def _quantiles(x: np.ndarray) -> dict | None:
  if not len(x):
    return None
  q = np.percentile(x, [5, 50, 95])
  return dict(p5=float(q[0]), median=float(q[1]), p95=float(q[2]), n=int(len(x)))


def _subset(s: cd.CopyScores, rows: np.ndarray) -> cd.CopyScores:
  return cd.CopyScores(**{f.name: getattr(s, f.name)[rows] for f in dataclasses.fields(s)})


def _by_kind(positives: Positives, detected: np.ndarray) -> dict:
  kinds = np.asarray(positives.kind)
  out = {}
  for k in dict.fromkeys(positives.kind):
    for s in np.unique(positives.strength[kinds == k]):
      rows = (kinds == k) & (positives.strength == s)
      out[f"{k}:{s:g}"] = dict(tpr=float(detected[rows].mean()), n=int(rows.sum()))
  return out


def _within(detected, pos_dist, pos_class, copy_distance) -> dict | None:
  if not copy_distance:
    return None
  out = {}
  for c, d in copy_distance.items():
    rows = (pos_class == int(c)) & (pos_dist <= d)
    out[str(c)] = dict(tpr=_rate(detected[rows]), n=int(rows.sum()), max_distance=float(d))
  rows = np.zeros(len(pos_dist), bool)
  for c, d in copy_distance.items():
    rows |= (pos_class == int(c)) & (pos_dist <= d)
  out["all"] = dict(tpr=_rate(detected[rows]), n=int(rows.sum()))
  return out


def _auc(pos_scores, neg_scores) -> float | None:
  pos_scores, neg_scores = pos_scores[np.isfinite(pos_scores)], neg_scores[np.isfinite(neg_scores)]
  if not len(pos_scores) or not len(neg_scores):
    return None
  return detection.auc(np.concatenate([pos_scores, neg_scores]),
                       np.concatenate([np.ones(len(pos_scores), bool), np.zeros(len(neg_scores), bool)]))


def _nearest_metric(name, labels, heldout_labels, fold, hard, positives, pos, neg, pos_dist,
                    pos_class, extra_negatives, extra, fpr, num_classes, copy_distance) -> dict:
  cal = cd.calibrate(name, _subset(neg, fold == 0), labels, num_classes=num_classes, fpr=fpr)
  detected = cal.flags(pos, labels) & (pos.matched(name) == positives.source)
  neg_flags = cal.flags(neg, labels)
  test = fold == 1
  pos_s, neg_s = pos.score(name), neg.score(name)
  per_class = {}
  for c in range(num_classes):
    pc, nc = pos_class == c, np.asarray(heldout_labels) == c
    per_class[str(c)] = dict(
        auc=_auc(pos_s[pc], neg_s[nc]), threshold=float(cal.thresholds[c]),
        n_calibration=int(cal.n_negatives[c]), tpr=_rate(detected[pc]), n_positives=int(pc.sum()),
        fpr_heldout=_rate(neg_flags[test & nc]), fpr_hard=_rate(neg_flags[test & nc & hard]))
  row = dict(calibration=cal.to_json(), auc=_auc(pos_s, neg_s), tpr=_rate(detected),
             fpr_heldout=_rate(neg_flags[test]), fpr_hard=_rate(neg_flags[test & hard]),
             per_class=per_class, by_kind=_by_kind(positives, detected),
             within_copy_distance=_within(detected, pos_dist, pos_class, copy_distance),
             extra_negatives={})
  for k, e in extra.items():
    flags = cal.flags(e, labels)
    row["extra_negatives"][k] = dict(fpr=_rate(flags), n=int(len(flags)),
                                     fpr_on_target=_rate(flags & (e.matched(name) == e.target)))
  return row


def _named_metric(name, unique_images, labels, heldout_images, heldout_labels, fold, hard,
                  positives, pos, pos_dist, pos_class, extra_negatives, extra, fpr, num_classes,
                  copy_distance) -> dict:
  """One threshold per source image u, from the calibration half of its class's held-out images
  scored against u; measured on the other half, and on the hard ones."""
  heldout_labels = np.asarray(heldout_labels)
  pos_s = pos.score(name)
  thresholds = {}
  neg_scores_test, neg_flags_test, neg_flags_hard, neg_class = [], [], [], []
  pos_neg_auc: dict[int, tuple[list, list]] = {c: ([], []) for c in range(num_classes)}
  for u in np.unique(positives.source):
    c = int(labels[u])
    rows = heldout_labels == c
    s = cd.named_scores(name, heldout_images[rows], unique_images[u])
    f = fold[rows]
    theta = cd.threshold_at_fpr(s[f == 0], fpr=fpr)
    thresholds[int(u)] = theta
    neg_flags_test.append(s[f == 1] > theta)
    neg_flags_hard.append((s > theta)[(f == 1) & hard[rows]])
    neg_scores_test.append(s)
    neg_class.append(np.full(int((f == 1).sum()), c))
    pos_neg_auc[c][0].append(pos_s[positives.source == u])
    pos_neg_auc[c][1].append(s)
  theta_of = np.asarray([thresholds[int(u)] for u in positives.source])
  detected = pos_s > theta_of
  flags_test, cls_test = np.concatenate(neg_flags_test), np.concatenate(neg_class)
  per_class = {}
  for c in range(num_classes):
    pc = pos_class == c
    if not pc.any():
      continue
    ths = [thresholds[int(u)] for u in np.unique(positives.source[pc])]
    per_class[str(c)] = dict(
        auc=_auc(np.concatenate(pos_neg_auc[c][0]), np.concatenate(pos_neg_auc[c][1])),
        threshold=float(np.median(ths)), threshold_range=[float(min(ths)), float(max(ths))],
        tpr=_rate(detected[pc]), n_positives=int(pc.sum()),
        fpr_heldout=_rate(flags_test[cls_test == c]))
  all_pos = np.concatenate([np.concatenate(v[0]) for v in pos_neg_auc.values() if v[0]])
  all_neg = np.concatenate([np.concatenate(v[1]) for v in pos_neg_auc.values() if v[1]])
  row = dict(calibration=dict(score=name, fpr=fpr, per="source image",
                              thresholds={str(u): t for u, t in thresholds.items()}),
             auc=_auc(all_pos, all_neg), tpr=_rate(detected), fpr_heldout=_rate(flags_test),
             fpr_hard=_rate(np.concatenate(neg_flags_hard)), per_class=per_class,
             by_kind=_by_kind(positives, detected),
             within_copy_distance=_within(detected, pos_dist, pos_class, copy_distance),
             extra_negatives={})
  for k, e in extra.items():  # e: the scores of extra_negatives[k] (targets set)
    has = e.target >= 0
    theta = np.full(len(e), np.inf)
    for u in np.unique(e.target[has]):
      if int(u) not in thresholds:  # the memorized image is always a source: choose_sources
        rows = heldout_labels == int(labels[u])
        s = cd.named_scores(name, heldout_images[rows], unique_images[u])
        thresholds[int(u)] = cd.threshold_at_fpr(s[fold[rows] == 0], fpr=fpr)
      theta[e.target == u] = thresholds[int(u)]
    flags = e.score(name) > theta
    row["extra_negatives"][k] = dict(fpr=_rate(flags[has]), n=int(has.sum()),
                                     fpr_on_target=_rate(flags[has]))
  return row
