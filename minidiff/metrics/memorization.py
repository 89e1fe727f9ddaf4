"""Memorization metrics: does a generated sample copy a training image (docs/science.md §2, §4)?

Every search runs in pixel space against the DE-DUPLICATED training set (`unique_images`, [N, ...]),
with `is_duplicated` [N] marking the unique images that the training set repeats. Searching the raw,
duplicated set would make NN₂ a copy of NN₁, push the ratio to ≈ 1 and miss real copies.

Metrics, per sample x̂ (all distances plain pixel L2 over the whole image):
  * ratio test (Yoon et al. 2023; Gu et al.): copy iff ‖x̂ − NN₁‖ / ‖x̂ − NN₂‖ < 1/3.
  * Carlini et al. (2023) normalised distance ℓ₂(x̂, NN₁) / (α · mean_{y∈S} ℓ₂(x̂, y)), S the n = 50
    nearest unique training images (NN₁ included), α = 0.5. When fewer than n unique images exist,
    S is all of them (the effective n is reported). We report the fraction below each threshold in
    `carlini_thresholds` (default 0.5 and 1.0: NN₁ closer than a quarter / a half of the mean distance
    to the n nearest); the paper's own extraction threshold is not reproduced here.
  * similarity (stand-in for Somepalli et al.'s SSCD cosine similarity, which needs downloaded
    weights): the normalised cross-correlation of pixels (Pearson correlation: cosine similarity
    after subtracting each image's mean) with the most similar unique training image. We report
    its 95th percentile and the fraction above 0.5. A constant image (pixel std < 1e-5) has
    correlation 0 with all.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

RATIO_THRESHOLD = 1.0 / 3.0
CARLINI_N = 50
CARLINI_ALPHA = 0.5
CARLINI_THRESHOLDS = (0.5, 1.0)
SIMILARITY_THRESHOLD = 0.5
SIMILARITY_PERCENTILE = 95.0
log = logging.getLogger(__name__)
_EXTRA_CANDIDATES = 16  # Candidates re-ranked by exact distance beyond the k requested.


def _flatten_pair(samples: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates [M, ...] and [N, ...] with equal trailing shapes; returns float32 [M, D], [N, D]."""
  samples, reference = np.asarray(samples, np.float32), np.asarray(reference, np.float32)
  if samples.ndim < 2 or reference.ndim < 2:
    raise ValueError(f"Expected samples [M, ...] and reference [N, ...] with at least 2 dims; "
                     f"got {samples.shape} and {reference.shape}.")
  if samples.shape[1:] != reference.shape[1:]:
    raise ValueError(f"Samples {samples.shape[1:]} and reference images {reference.shape[1:]} "
                     f"differ in shape.")
  if samples.shape[0] == 0 or reference.shape[0] == 0:
    raise ValueError(f"Empty input: {samples.shape[0]} samples, {reference.shape[0]} reference images.")
  if not (np.all(np.isfinite(samples)) and np.all(np.isfinite(reference))):
    raise ValueError("Samples or reference images contain NaN or infinite values.")
  return samples.reshape(samples.shape[0], -1), reference.reshape(reference.shape[0], -1)


def _chunks(rows: np.ndarray, chunk: int):
  """Yields (start, padded chunk, valid count); the last chunk is padded so one shape compiles."""
  if chunk < 1:
    raise ValueError(f"chunk={chunk} must be ≥ 1.")
  size = min(chunk, rows.shape[0])
  for start in range(0, rows.shape[0], size):
    part = rows[start:start + size]
    valid = part.shape[0]
    if valid < size:
      part = np.concatenate([part, np.zeros((size - valid, rows.shape[1]), rows.dtype)])
    yield start, jnp.asarray(part), valid


@functools.partial(jax.jit, static_argnames=("k", "n_candidates"))
def _knn_chunk(a: jax.Array, b: jax.Array, b_sq: jax.Array, *, k: int,
               n_candidates: int) -> tuple[jax.Array, jax.Array]:
  """k nearest rows of b for each row of a: candidates by ‖a‖² − 2ab + ‖b‖², then exact re-ranking."""
  a_sq = jnp.sum(a * a, axis=1, keepdims=True)
  cross = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  approx = jnp.maximum(a_sq - 2.0 * cross + b_sq[None, :], 0.0)
  _, cand = jax.lax.top_k(-approx, n_candidates)
  cand = jnp.sort(cand, axis=1)  # Exact ties then resolve to the lower index, as a stable sort does.
  exact = jnp.sqrt(jnp.sum(jnp.square(a[:, None, :] - b[cand]), axis=-1))
  order = jnp.argsort(exact, axis=1, stable=True)[:, :k]
  return jnp.take_along_axis(exact, order, axis=1), jnp.take_along_axis(cand, order, axis=1)


def nearest_neighbours(samples: np.ndarray, reference: np.ndarray, *, k: int = 2,
                       chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-nearest reference images of each sample by pixel L2, jitted and chunked over samples.

  Candidates come from the expanded form ‖a‖² − 2ab + ‖b‖² (clamped at 0); the best k + 16 are
  re-ranked by exact differences, so distances carry no cancellation error (an exact copy gives 0).
  Exact ties go to the lower reference index.

  Returns:
    (dist [M, k] float32, idx [M, k] int32), nearest first.
  """
  a, b = _flatten_pair(samples, reference)
  if not 1 <= k <= b.shape[0]:
    raise ValueError(f"k={k} must lie in [1, {b.shape[0]}] (the number of reference images).")
  b = jnp.asarray(b)
  b_sq = jnp.sum(b * b, axis=1)
  n_candidates = min(b.shape[0], k + _EXTRA_CANDIDATES)
  dist = np.empty((a.shape[0], k), np.float32)
  idx = np.empty((a.shape[0], k), np.int32)
  for start, part, valid in _chunks(a, chunk):
    d, i = _knn_chunk(part, b, b_sq, k=k, n_candidates=n_candidates)
    dist[start:start + valid], idx[start:start + valid] = np.asarray(d)[:valid], np.asarray(i)[:valid]
  return dist, idx


def _standardise(rows: jax.Array) -> jax.Array:
  """Subtracts each row's mean and scales to unit norm; rows with pixel std < 1e-5 become 0."""
  centred = rows - rows.mean(axis=1, keepdims=True)
  norm = jnp.linalg.norm(centred, axis=1, keepdims=True)
  constant = norm < 1e-5 * jnp.sqrt(rows.shape[1])  # Round-off of a constant image's mean.
  return jnp.where(constant, 0.0, centred / jnp.where(constant, 1.0, norm))


@jax.jit
def _most_similar_chunk(a: jax.Array, b_std: jax.Array) -> tuple[jax.Array, jax.Array]:
  sim = jnp.matmul(_standardise(a), b_std.T, precision=jax.lax.Precision.HIGHEST)
  return sim.max(axis=1), sim.argmax(axis=1).astype(jnp.int32)


def most_similar(samples: np.ndarray, reference: np.ndarray, *,
                 chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Top-1 normalised cross-correlation (Pearson correlation of pixels) of each sample.

  Returns:
    (similarity [M] float32 in [−1, 1], index [M] int32 of the most similar reference image).
  """
  a, b = _flatten_pair(samples, reference)
  b_std = _standardise(jnp.asarray(b))
  sim = np.empty((a.shape[0],), np.float32)
  idx = np.empty((a.shape[0],), np.int32)
  for start, part, valid in _chunks(a, chunk):
    s, i = _most_similar_chunk(part, b_std)
    sim[start:start + valid], idx[start:start + valid] = np.asarray(s)[:valid], np.asarray(i)[:valid]
  return sim, idx


def distance_ratio(nn_dist: np.ndarray) -> np.ndarray:
  """‖x̂ − NN₁‖ / ‖x̂ − NN₂‖ from nearest-neighbour distances [M, ≥2]; 0/0 (NN₁ = NN₂ = x̂) → 1."""
  nn_dist = np.asarray(nn_dist, np.float64)
  if nn_dist.ndim != 2 or nn_dist.shape[1] < 2:
    raise ValueError(f"Expected distances [M, k ≥ 2]; got {nn_dist.shape}.")
  d1, d2 = nn_dist[:, 0], nn_dist[:, 1]
  return np.divide(d1, d2, out=np.ones_like(d1), where=d2 > 0)


def ratio_test(nn_dist: np.ndarray, *, threshold: float = RATIO_THRESHOLD) -> np.ndarray:
  """Copy flags [M]: ‖x̂ − NN₁‖ / ‖x̂ − NN₂‖ < threshold (Yoon et al. 2023; Gu et al.)."""
  return distance_ratio(nn_dist) < threshold


def carlini_distance(nn_dist: np.ndarray, *, alpha: float = CARLINI_ALPHA) -> np.ndarray:
  """Carlini et al.'s ℓ₂(x̂, NN₁) / (α · mean ℓ₂(x̂, S)) from sorted distances [M, n] to the set S.

  When every distance is 0 (possible only with a duplicated reference) the result is 0.
  """
  nn_dist = np.asarray(nn_dist, np.float64)
  if nn_dist.ndim != 2 or nn_dist.shape[1] < 1:
    raise ValueError(f"Expected distances [M, n ≥ 1]; got {nn_dist.shape}.")
  if alpha <= 0:
    raise ValueError(f"alpha={alpha} must be > 0.")
  scale = alpha * nn_dist.mean(axis=1)
  return np.divide(nn_dist[:, 0], scale, out=np.zeros(nn_dist.shape[0]), where=scale > 0)


@dataclasses.dataclass(frozen=True)
class MemorizationResult:
  """Per-sample measurements (numpy arrays, one row per sample) for a later study.

  Attributes:
    nn_index: [M, 2] indices (into the unique images) of NN₁ and NN₂.
    nn_distance: [M, 2] their pixel L2 distances.
    ratio: [M] ‖x̂ − NN₁‖ / ‖x̂ − NN₂‖.
    is_copy: [M] ratio < ratio_threshold.
    copies_duplicated: [M] is_copy and NN₁ is a duplicated image.
    carlini: [M] Carlini et al.'s normalised distance.
    similarity: [M] top-1 pixel normalised cross-correlation; similarity_index: [M] its image.
    is_duplicated: [N] the flags the measurements were made with.
    ratio_threshold, carlini_n (effective n), carlini_alpha: the settings used.
  """

  nn_index: np.ndarray
  nn_distance: np.ndarray
  ratio: np.ndarray
  is_copy: np.ndarray
  copies_duplicated: np.ndarray
  carlini: np.ndarray
  similarity: np.ndarray
  similarity_index: np.ndarray
  is_duplicated: np.ndarray
  ratio_threshold: float
  carlini_n: int
  carlini_alpha: float


def near_duplicates(unique_images: np.ndarray, *, threshold: float = RATIO_THRESHOLD,
                    warn: bool = True) -> np.ndarray:
  """Pairs (u, v) of reference images where v passes the ratio test as a copy of u.

  Such a pair hides copies: a sample close to u has v almost as close, so its ratio
  ‖x−NN₁‖/‖x−NN₂‖ stays near 1 and the test misses it (a 1e-3 perturbation of a training image
  is enough). With `warn`, logs how many pairs there are and the first few.

  Returns:
    int [P, 2] pairs with u < v, sorted.
  """
  n = np.shape(unique_images)[0]
  if n < 3:
    return np.zeros((0, 2), np.int64)
  dist, idx = nearest_neighbours(unique_images, unique_images, k=3)  # the first is the image itself
  ratio = distance_ratio(dist[:, 1:3])
  hits = np.flatnonzero(ratio < threshold)
  pairs = np.unique(np.sort(np.stack([hits, idx[hits, 1]], axis=1), axis=1), axis=0).astype(np.int64)
  if warn and len(pairs):
    log.warning("The memorization reference holds %d near-duplicate pair(s) (one passes the ratio "
                "test as a copy of the other), e.g. %s: copies of these images can be missed. "
                "De-duplicate near-identical images in the training set.", len(pairs),
                pairs[:5].tolist())
  return pairs


def _check_unique(unique_images: np.ndarray, is_duplicated: np.ndarray) -> np.ndarray:
  is_duplicated = np.asarray(is_duplicated)
  n = np.shape(unique_images)[0]
  if is_duplicated.shape != (n,) or is_duplicated.dtype != np.bool_:
    raise ValueError(f"is_duplicated must be a boolean array [{n}]; got {is_duplicated.dtype} "
                     f"{is_duplicated.shape}.")
  if n < 2:
    raise ValueError(f"The ratio test needs at least 2 unique training images; got {n}.")
  flat = np.asarray(unique_images).reshape(n, -1)
  if np.unique(flat, axis=0).shape[0] != n:
    raise ValueError("unique_images contains exact duplicates: de-duplicate the training set first "
                     "(otherwise NN₂ is a copy of NN₁ and copies are missed).")
  return is_duplicated


def analyse_samples(samples: np.ndarray, unique_images: np.ndarray, is_duplicated: np.ndarray, *,
                    ratio_threshold: float = RATIO_THRESHOLD, carlini_n: int = CARLINI_N,
                    carlini_alpha: float = CARLINI_ALPHA, chunk: int = 256) -> MemorizationResult:
  """Runs every per-sample measurement of samples [M, ...] against the de-duplicated training set.

  Raises ValueError if `unique_images` holds exact duplicates, has fewer than 2 images, or if
  shapes disagree. Carlini's S uses min(carlini_n, N) images.
  """
  is_duplicated = _check_unique(unique_images, is_duplicated)
  if carlini_n < 1:
    raise ValueError(f"carlini_n={carlini_n} must be ≥ 1.")
  n_eff = min(carlini_n, np.shape(unique_images)[0])
  dist, idx = nearest_neighbours(samples, unique_images, k=max(2, n_eff), chunk=chunk)
  ratio = distance_ratio(dist[:, :2])
  is_copy = ratio_test(dist[:, :2], threshold=ratio_threshold)
  similarity, similarity_index = most_similar(samples, unique_images, chunk=chunk)
  return MemorizationResult(
      nn_index=idx[:, :2], nn_distance=dist[:, :2], ratio=ratio, is_copy=is_copy,
      copies_duplicated=is_copy & is_duplicated[idx[:, 0]],
      carlini=carlini_distance(dist[:, :n_eff], alpha=carlini_alpha),
      similarity=similarity, similarity_index=similarity_index, is_duplicated=is_duplicated,
      ratio_threshold=float(ratio_threshold), carlini_n=n_eff, carlini_alpha=float(carlini_alpha))


def copy_counts(is_copy: np.ndarray, nn_index: np.ndarray, is_duplicated: np.ndarray) -> dict[str, Any]:
  """Which unique training images were copied and how often, split duplicated / not duplicated.

  Args:
    is_copy: [M] bool, whether each sample is a copy.
    nn_index: [M] index of each sample's nearest unique image (NN₁).
    is_duplicated: [N] bool per unique image.

  Returns:
    JSON-ready dict: `counts` [N] (copies per unique image), the number of copies and of distinct
    copied images in each group, the group sizes, and `copied` = [[index, count, duplicated], ...]
    sorted by count (descending) then index.
  """
  is_copy, nn_index = np.asarray(is_copy, bool), np.asarray(nn_index)
  is_duplicated = np.asarray(is_duplicated, bool)
  if is_copy.ndim != 1 or nn_index.shape != is_copy.shape:
    raise ValueError(f"is_copy and nn_index must both be [M]; got {is_copy.shape} and {nn_index.shape}.")
  n = is_duplicated.shape[0]
  if nn_index.size and (nn_index.min() < 0 or nn_index.max() >= n):
    raise ValueError(f"nn_index out of range for {n} unique images.")
  counts = np.bincount(nn_index[is_copy], minlength=n)
  copied = np.flatnonzero(counts)
  copied = copied[np.lexsort((copied, -counts[copied]))]
  return {
      "counts": counts.tolist(),
      "copies_of_duplicated": int(counts[is_duplicated].sum()),
      "copies_of_non_duplicated": int(counts[~is_duplicated].sum()),
      "distinct_duplicated_copied": int(np.count_nonzero(counts[is_duplicated])),
      "distinct_non_duplicated_copied": int(np.count_nonzero(counts[~is_duplicated])),
      "n_duplicated": int(is_duplicated.sum()),
      "n_non_duplicated": int((~is_duplicated).sum()),
      "copied": [[int(i), int(counts[i]), bool(is_duplicated[i])] for i in copied],
  }


def summarize(result: MemorizationResult, *,
              carlini_thresholds: tuple[float, ...] = CARLINI_THRESHOLDS,
              similarity_threshold: float = SIMILARITY_THRESHOLD,
              similarity_percentile: float = SIMILARITY_PERCENTILE) -> dict[str, Any]:
  """Aggregates a MemorizationResult into plain Python numbers and lists (JSON-ready).

  Rates are fractions of all samples; `copy_rate_duplicated` counts copies whose NN₁ is a
  duplicated image. The settings used are included so every number is self-describing.
  """
  m = int(result.ratio.shape[0])
  counts = copy_counts(result.is_copy, result.nn_index[:, 0], result.is_duplicated)
  n_copies = int(result.is_copy.sum())
  return {
      "n_samples": m,
      "n_unique_reference": int(result.is_duplicated.shape[0]),
      "n_duplicated_reference": int(result.is_duplicated.sum()),
      "ratio_threshold": result.ratio_threshold,
      "memorization_rate": n_copies / m,
      "copy_rate_duplicated": int(result.copies_duplicated.sum()) / m,
      "copy_rate_non_duplicated": (n_copies - int(result.copies_duplicated.sum())) / m,
      "median_ratio": float(np.median(result.ratio)),
      "carlini_n": result.carlini_n,
      "carlini_alpha": result.carlini_alpha,
      "carlini_fraction_below": {str(t): float(np.mean(result.carlini < t)) for t in carlini_thresholds},
      "carlini_median": float(np.median(result.carlini)),
      "similarity": "pixel normalised cross-correlation (Pearson), top-1 over unique training images",
      "similarity_percentile": float(similarity_percentile),
      "similarity_at_percentile": float(np.percentile(result.similarity, similarity_percentile)),
      "similarity_threshold": float(similarity_threshold),
      "similarity_fraction_above": float(np.mean(result.similarity > similarity_threshold)),
      "copies": {k: v for k, v in counts.items() if k != "counts"},
  }


def memorization_report(samples: np.ndarray, unique_images: np.ndarray, is_duplicated: np.ndarray, *,
                        ratio_threshold: float = RATIO_THRESHOLD, carlini_n: int = CARLINI_N,
                        carlini_alpha: float = CARLINI_ALPHA,
                        carlini_thresholds: tuple[float, ...] = CARLINI_THRESHOLDS,
                        similarity_threshold: float = SIMILARITY_THRESHOLD,
                        chunk: int = 256) -> dict[str, Any]:
  """`summarize(analyse_samples(...))`: the JSON-ready memorization summary of samples [M, ...]."""
  result = analyse_samples(samples, unique_images, is_duplicated, ratio_threshold=ratio_threshold,
                           carlini_n=carlini_n, carlini_alpha=carlini_alpha, chunk=chunk)
  return summarize(result, carlini_thresholds=carlini_thresholds,
                   similarity_threshold=similarity_threshold)
