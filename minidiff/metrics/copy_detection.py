"""Copy detection calibrated on real negatives: per-sample copy scores and their thresholds.

The ratio test ‖x − NN₁‖ / ‖x − NN₂‖ < 1/3 (Yoon et al. 2023; Gu et al.) misses copies whenever a
training image's second neighbour is a similar image of its class (thin 1s, round 0s): the ratio
stays near 1 for a sample a person calls a copy. The scores here compare a sample with ONE training
image and take their threshold from real held-out images that no model trained on:

  θ_c = the value that at most ⌊fpr · n_c⌋ of the n_c held-out negatives of class c exceed,

so a flag "score > θ_c" has a false-positive rate ≤ fpr on those negatives by construction. The class
c is that of the training image the sample is compared with (its nearest image, or the image its
condition names). Every score is "higher = more copy-like":

  * `ratio`: −‖x − NN₁‖/‖x − NN₂‖ (the classic test is ratio < 1/3, i.e. score > −1/3);
  * `carlini`: −Carlini et al.'s ℓ₂(x, NN₁) / (α · mean ℓ₂ to the 50 nearest);
  * `l2_nearest` / `ncc_nearest`: −L2 to the nearest image, the normalised cross-correlation
    (Pearson) with the most correlated image;
  * `l2_named` / `ncc_named`: the same against the training image the condition names;
  * `ncc_nearest_shift` / `ncc_named_shift`: the NCC at the best of the sample's ±1-pixel shifts
    (template matching: at 16×16 a one-pixel shift moves a thin stroke off itself);
  * `feature_cosine`: the evaluation classifier's penultimate-feature cosine with the nearest image
    in that feature space.

Which score the study counts copies with is chosen by the known-answer benchmark
(`minidiff.metrics.copy_benchmark`, docs/results/copy_benchmark/): `PRIMARY_NAMED` for the
study's `copy` flag (a copy of the image the condition names) and `PRIMARY_NEAREST` for
`copy_any` (a copy of any training image); `calibrate_study` sets both thresholds.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from minidiff.metrics import memorization

# Chosen by the benchmark table (docs/results/copy_benchmark/README.md): the primary copy flag of a
# condition that names a training image, and the flag for a copy of any training image.
PRIMARY_NAMED = "ncc_named_shift"
PRIMARY_NEAREST = "ncc_nearest_shift"
DEFAULT_FPR = 0.01
SCORE_NAMES = ("ratio", "carlini", "l2_nearest", "ncc_nearest", "ncc_nearest_shift", "l2_named",
               "ncc_named", "ncc_named_shift", "feature_cosine")
NAMED = ("l2_named", "ncc_named", "ncc_named_shift")  # against the named image: undefined without
SHIFT = 1  # the *_shift scores take the best of the sample's (2·SHIFT + 1)² pixel shifts
DESCRIPTIONS = {
    "ratio": "ratio test −‖x−NN₁‖/‖x−NN₂‖ (classic threshold −1/3)",
    "carlini": "−Carlini et al.'s ℓ₂(x, NN₁) / (0.5 · mean ℓ₂ to the 50 nearest)",
    "l2_nearest": "−pixel L2 to the nearest training image",
    "ncc_nearest": "normalised cross-correlation with the most correlated training image",
    "ncc_nearest_shift": "ncc_nearest, best over the sample's ±1-pixel shifts",
    "l2_named": "−pixel L2 to the training image the condition names",
    "ncc_named": "normalised cross-correlation with the training image the condition names",
    "ncc_named_shift": "ncc_named, best over the sample's ±1-pixel shifts",
    "feature_cosine": "classifier-feature cosine with the nearest training image in that space",
}


@dataclasses.dataclass(frozen=True)
class CopyScores:
  """Per-sample scores of M samples against the de-duplicated training set (numpy, row = sample).

  Attributes:
    nn_index, nn_distance: [M, 2] NN₁, NN₂ by pixel L2 and their distances.
    carlini: [M] Carlini et al.'s normalised distance.
    ncc, ncc_index: [M] the top normalised cross-correlation and its image.
    ncc_shift, ncc_shift_index: [M] the same, best over the sample's ±SHIFT-pixel shifts.
    target: [M] the named image (−1: none); target_distance, target_ncc, target_ncc_shift: [M]
      (NaN where none).
    feature_cosine, feature_index: [M] (NaN / −1 without features).
  """

  nn_index: np.ndarray
  nn_distance: np.ndarray
  carlini: np.ndarray
  ncc: np.ndarray
  ncc_index: np.ndarray
  ncc_shift: np.ndarray
  ncc_shift_index: np.ndarray
  target: np.ndarray
  target_distance: np.ndarray
  target_ncc: np.ndarray
  target_ncc_shift: np.ndarray
  feature_cosine: np.ndarray
  feature_index: np.ndarray

  def __len__(self) -> int:
    return int(self.nn_index.shape[0])

  def score(self, name: str) -> np.ndarray:
    """[M] float64 score `name` of SCORE_NAMES, higher = more copy-like (NaN where undefined)."""
    d1 = self.nn_distance[:, 0].astype(np.float64)
    table = {
        "ratio": lambda: -memorization.distance_ratio(self.nn_distance),
        "carlini": lambda: -self.carlini.astype(np.float64),
        "l2_nearest": lambda: -d1,
        "ncc_nearest": lambda: self.ncc.astype(np.float64),
        "ncc_nearest_shift": lambda: self.ncc_shift.astype(np.float64),
        "l2_named": lambda: -self.target_distance.astype(np.float64),
        "ncc_named": lambda: self.target_ncc.astype(np.float64),
        "ncc_named_shift": lambda: self.target_ncc_shift.astype(np.float64),
        "feature_cosine": lambda: self.feature_cosine.astype(np.float64),
    }
    if name not in table:
      raise ValueError(f"Unknown copy score {name!r}; choose one of {', '.join(SCORE_NAMES)}.")
    return table[name]()

  def matched(self, name: str) -> np.ndarray:
    """[M] the training image score `name` compares each sample with (−1: none)."""
    if name in NAMED:
      return self.target
    if name == "ncc_nearest":
      return self.ncc_index
    if name == "ncc_nearest_shift":
      return self.ncc_shift_index
    if name == "feature_cosine":
      return self.feature_index
    return self.nn_index[:, 0]


def _ncc_with(samples: np.ndarray, images: np.ndarray) -> np.ndarray:
  """Row-wise normalised cross-correlation of samples [M, D] with images [M, D] (0 for constants)."""
  def standardise(rows):
    centred = rows - rows.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    constant = norm < 1e-5 * math.sqrt(rows.shape[1])
    return np.where(constant, 0.0, centred / np.where(constant, 1.0, norm))
  return np.sum(standardise(samples) * standardise(images), axis=1)


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """images [N, H, W, C] moved dy pixels down and dx right; uncovered pixels take each image's
  minimum (the background)."""
  fill = images.min(axis=(1, 2, 3), keepdims=True)
  out = np.broadcast_to(fill, images.shape).copy()
  h, w = images.shape[1:3]
  out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      images[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  return out


def _shifts(images: np.ndarray, s: int = SHIFT):
  return [shifted(images, dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]


def _unit(rows: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(rows, axis=1, keepdims=True)
  return rows / np.maximum(norm, 1e-12)


def score_samples(samples: np.ndarray, unique_images: np.ndarray, *,
                  target: np.ndarray | None = None, features: np.ndarray | None = None,
                  unique_features: np.ndarray | None = None,
                  carlini_n: int = memorization.CARLINI_N) -> CopyScores:
  """Every candidate score of samples [M, ...] against the de-duplicated training set [U, ...].

  Args:
    target: [M] index of the training image each sample's condition names (−1: none).
    features, unique_features: [M, F] and [U, F] classifier features (both or neither).
  """
  samples = np.asarray(samples, np.float32)
  unique_images = np.asarray(unique_images, np.float32)
  m, u = samples.shape[0], unique_images.shape[0]
  if u < 2:
    raise ValueError(f"Copy scores need at least 2 training images; got {u}.")
  target = np.full(m, -1, np.int64) if target is None else np.asarray(target, np.int64)
  if target.shape != (m,) or target.max(initial=-1) >= u:
    raise ValueError(f"target must be [{m}] indices below {u} (−1: none); got shape {target.shape}.")
  n_eff = min(carlini_n, u)
  dist, idx = memorization.nearest_neighbours(samples, unique_images, k=max(2, n_eff))
  ncc, ncc_index = memorization.most_similar(samples, unique_images)
  best = [memorization.most_similar(x, unique_images) for x in _shifts(samples)]
  which = np.argmax(np.stack([b[0] for b in best]), axis=0)
  ncc_shift = np.stack([b[0] for b in best])[which, np.arange(m)]
  ncc_shift_index = np.stack([b[1] for b in best])[which, np.arange(m)]
  flat_s = samples.reshape(m, -1).astype(np.float64)
  flat_u = unique_images.reshape(u, -1).astype(np.float64)
  has = target >= 0
  named = flat_u[np.where(has, target, 0)]
  target_distance = np.where(has, np.linalg.norm(flat_s - named, axis=1), np.nan)
  target_ncc = np.where(has, _ncc_with(flat_s, named), np.nan)
  target_ncc_shift = np.where(has, np.max([_ncc_with(x.reshape(m, -1).astype(np.float64), named)
                                           for x in _shifts(samples)], axis=0), np.nan)
  if (features is None) != (unique_features is None):
    raise ValueError("Give both features and unique_features (classifier features), or neither.")
  if features is not None:
    cos = _unit(np.asarray(features, np.float64)) @ _unit(np.asarray(unique_features, np.float64)).T
    feature_index = cos.argmax(axis=1).astype(np.int64)
    feature_cosine = cos[np.arange(m), feature_index]
  else:
    feature_index, feature_cosine = np.full(m, -1, np.int64), np.full(m, np.nan)
  return CopyScores(nn_index=idx[:, :2].astype(np.int64), nn_distance=dist[:, :2],
                    carlini=memorization.carlini_distance(dist[:, :n_eff]), ncc=ncc,
                    ncc_index=ncc_index.astype(np.int64), ncc_shift=ncc_shift,
                    ncc_shift_index=ncc_shift_index.astype(np.int64), target=target,
                    target_distance=target_distance, target_ncc=target_ncc,
                    target_ncc_shift=target_ncc_shift,
                    feature_cosine=feature_cosine, feature_index=feature_index)


def threshold_at_fpr(negative_scores: np.ndarray, *, fpr: float = DEFAULT_FPR) -> float:
  """The smallest observed negative score θ with #(negatives > θ) ≤ ⌊fpr · n⌋ (flag: score > θ)."""
  s = np.sort(np.asarray(negative_scores, np.float64)[np.isfinite(negative_scores)])[::-1]
  if s.size == 0:
    raise ValueError("No finite negative scores to calibrate a copy threshold on.")
  if not 0.0 <= fpr < 1.0:
    raise ValueError(f"fpr={fpr} must lie in [0, 1).")
  return float(s[min(int(math.floor(fpr * s.size)), s.size - 1)])


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Per-class thresholds of one score, set on held-out negatives (flag: score > threshold[class]).

  Attributes:
    score: the score's name (SCORE_NAMES).
    fpr: the false-positive rate the thresholds allow on their negatives.
    thresholds: [C] one per class of the compared training image; classes with fewer than
      `min_negatives` negatives take the threshold of all negatives pooled.
    n_negatives: [C] negatives per class; pooled_threshold: over all of them.
  """

  score: str
  fpr: float
  thresholds: np.ndarray
  n_negatives: np.ndarray
  pooled_threshold: float

  def flags(self, scores: CopyScores, labels: np.ndarray) -> np.ndarray:
    """[M] bool: a copy of the compared image (`labels` [U]: the training images' classes)."""
    matched = scores.matched(self.score)
    value = scores.score(self.score)
    ok = (matched >= 0) & np.isfinite(value)
    theta = np.where(ok, self.thresholds[np.asarray(labels)[np.where(ok, matched, 0)]], np.inf)
    return ok & (value > theta)

  def to_json(self) -> dict:
    return dict(score=self.score, description=DESCRIPTIONS[self.score], fpr=self.fpr,
                thresholds=[float(t) for t in self.thresholds],
                n_negatives=[int(n) for n in self.n_negatives],
                pooled_threshold=self.pooled_threshold)


def calibrate(score: str, negatives: CopyScores, labels: np.ndarray, *, num_classes: int,
              fpr: float = DEFAULT_FPR, min_negatives: int = 50) -> Calibration:
  """Thresholds of `score` per class of the compared training image from held-out negatives.

  Args:
    negatives: scores of real held-out images (never trained on), with `target` set to the named
      image of their class for the named scores.
    labels: [U] classes of the training images.
  """
  value = negatives.score(score)
  matched = negatives.matched(score)
  ok = (matched >= 0) & np.isfinite(value)
  cls = np.asarray(labels)[np.where(ok, matched, 0)]
  pooled = threshold_at_fpr(value[ok], fpr=fpr)
  thresholds = np.full(num_classes, pooled)
  counts = np.zeros(num_classes, np.int64)
  for c in range(num_classes):
    rows = ok & (cls == c)
    counts[c] = int(rows.sum())
    if counts[c] >= min_negatives:
      thresholds[c] = threshold_at_fpr(value[rows], fpr=fpr)
  return Calibration(score=score, fpr=float(fpr), thresholds=thresholds, n_negatives=counts,
                     pooled_threshold=pooled)


def named_targets(query_labels: np.ndarray, named_of_class: Mapping[int, int]) -> np.ndarray:
  """[M] the named image of each query's class (−1 where its class names none)."""
  return np.asarray([named_of_class.get(int(c), -1) for c in np.asarray(query_labels)], np.int64)


def choose_named(samples: np.ndarray, unique_images: np.ndarray, named: np.ndarray, *,
                 thresholds: Mapping[int, float], score: str = PRIMARY_NAMED) -> np.ndarray:
  """[M] for each sample, the one of its named images [M, K] (−1 padded) it is most a copy of:
  the largest margin score − θ_u (K = 1: the named image itself)."""
  named = np.asarray(named, np.int64)
  if named.ndim == 1 or named.shape[1] == 1:
    return named.reshape(-1)
  samples = np.asarray(samples, np.float32)
  best = np.full(named.shape[0], -np.inf)
  out = named[:, 0].copy()
  for u in np.unique(named[named >= 0]):
    rows = np.flatnonzero((named == u).any(axis=1))
    margin = named_scores(score, samples[rows], unique_images[u]) - thresholds[int(u)]
    better = margin > best[rows]
    out[rows[better]], best[rows[better]] = u, margin[better]
  return out


def named_scores(name: str, images: np.ndarray, image: np.ndarray) -> np.ndarray:
  """[N] named score `name` (NAMED) of images [N, ...] against ONE training image [...]."""
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  ref = np.broadcast_to(np.asarray(image, np.float64).reshape(1, -1), (n, images[0].size))
  if name == "l2_named":
    return -np.linalg.norm(images.reshape(n, -1).astype(np.float64) - ref, axis=1)
  if name == "ncc_named":
    return _ncc_with(images.reshape(n, -1).astype(np.float64), ref)
  if name == "ncc_named_shift":
    return np.max([_ncc_with(x.reshape(n, -1).astype(np.float64), ref) for x in _shifts(images)],
                  axis=0)
  raise ValueError(f"{name!r} is not a named score; choose one of {', '.join(NAMED)}.")


@dataclasses.dataclass(frozen=True)
class StudyCalibration:
  """The study's two copy flags, calibrated on real held-out images of each class.

  `copy` (the primary metric): `named` score above the named image's own threshold — the value
  that at most ⌊fpr·n⌋ of its class's n held-out images exceed. `copy_any`: `nearest` score above
  its per-class threshold (a copy of any training image, for conditions that name none too).
  """

  named: str
  named_thresholds: Mapping[int, float]  # unique-image id → θ
  named_n: Mapping[int, int]  # unique-image id → held-out negatives of its class
  nearest: Calibration
  fpr: float

  def copy(self, scores: CopyScores) -> np.ndarray:
    """[M] bool: a copy of the training image the condition names (False where it names none)."""
    value = scores.score(self.named)
    theta = np.asarray([self.named_thresholds.get(int(u), np.inf) for u in scores.target])
    return (scores.target >= 0) & np.isfinite(value) & (value > theta)

  def copy_any(self, scores: CopyScores, labels: np.ndarray) -> np.ndarray:
    return self.nearest.flags(scores, labels)

  def to_json(self) -> dict:
    return dict(primary=dict(score=self.named, description=DESCRIPTIONS[self.named], fpr=self.fpr,
                             thresholds={str(u): float(t) for u, t in self.named_thresholds.items()},
                             n_negatives={str(u): int(n) for u, n in self.named_n.items()}),
                copy_any=self.nearest.to_json())


def calibrate_study(unique_images: np.ndarray, labels: np.ndarray, heldout_images: np.ndarray,
                    heldout_labels: np.ndarray, targets: np.ndarray, *, fpr: float = DEFAULT_FPR,
                    named: str = PRIMARY_NAMED, nearest: str = PRIMARY_NEAREST,
                    min_negatives: int = 50) -> StudyCalibration:
  """Thresholds for the images the study's conditions name (`targets`, −1 ignored) and for
  copies of any training image, from real held-out images no model trained on."""
  labels, heldout_labels = np.asarray(labels), np.asarray(heldout_labels)
  thresholds, counts = {}, {}
  for u in np.unique(np.asarray(targets)[np.asarray(targets) >= 0]):
    rows = heldout_labels == labels[u]
    if rows.sum() < min_negatives:
      raise ValueError(f"Only {int(rows.sum())} held-out images of class {int(labels[u])} to set "
                       f"the copy threshold of training image {int(u)} (need {min_negatives}): "
                       f"train on fewer images of that class or use a larger source dataset.")
    thresholds[int(u)] = threshold_at_fpr(named_scores(named, heldout_images[rows],
                                                       unique_images[u]), fpr=fpr)
    counts[int(u)] = int(rows.sum())
  neg = score_samples(heldout_images, unique_images)
  cal = calibrate(nearest, neg, labels, num_classes=int(max(labels.max(), heldout_labels.max()) + 1),
                  fpr=fpr, min_negatives=min_negatives)
  return StudyCalibration(named=named, named_thresholds=thresholds, named_n=counts, nearest=cal,
                          fpr=float(fpr))
