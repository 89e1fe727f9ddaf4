"""Detection quality of a per-sample score: exact ROC AUC (Mann–Whitney U), and Wen et al.'s figures.

Wen et al. (ICLR 2024) detect memorization with the mean over sampling steps of
d_t = ‖ε_c − ε_u‖ per sample: higher for memorized conditions. `auc(scores, labels)` measures how
well such a score separates positives (copies, or conditions with duplicated images) from negatives;
beside it Wen et al. report the TPR at 1% FPR (`tpr_at_fpr`) and the accuracy at the best
threshold (`best_accuracy`); `detection_figures` gives all three. A sample is called positive when
its score is ≥ the threshold.
"""
from __future__ import annotations

import math

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks of values; tied values share the mean of the ranks they span."""
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  new_run = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
  starts = np.flatnonzero(new_run)  # First sorted position of each run of equal values.
  ends = np.concatenate([starts[1:], [values.size]])
  run = np.cumsum(new_run) - 1  # The run each sorted position belongs to.
  ranks = np.empty(values.size, np.float64)
  ranks[order] = ((starts + 1 + ends) / 2.0)[run]  # Mean of ranks starts+1 … ends.
  return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Exact ROC AUC of `scores` for separating labels 1/True (positives) from 0/False (negatives).

  Equals P(score⁺ > score⁻) + ½ P(score⁺ = score⁻) over all positive–negative pairs (ties count
  half), computed from average ranks: (R⁺ − n⁺(n⁺ + 1)/2) / (n⁺ n⁻), with R⁺ the positives' rank sum.
  1 = positives always score higher, 0 = always lower, 0.5 = no separation.

  Raises:
    ValueError: on shape mismatch, non-binary labels, non-finite scores, or an empty class.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  if scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(f"Expected scores [M] and labels [M]; got {scores.shape} and {labels.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contains NaN or infinite values.")
  if labels.dtype != np.bool_:
    if not np.all(np.isin(labels, (0, 1))):
      raise ValueError(f"labels must be boolean or 0/1; got values {np.unique(labels)[:10]}.")
    labels = labels.astype(bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives.")
  rank_sum = float(_average_ranks(scores)[labels].sum())
  return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _checked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(scores float64 [M], labels bool [M]) after auc's checks (one clear error each)."""
  auc(scores, labels)  # raises for shapes, non-binary labels, NaN, an empty class
  labels = np.asarray(labels)
  return np.asarray(scores, np.float64), labels.astype(bool) if labels.dtype != np.bool_ else labels


def _counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(thresholds [K], true positives [K], false positives [K]) of the rule "positive iff
  score ≥ threshold", over every distinct score and +∞ (nothing positive); exact integers."""
  thresholds = np.append(np.unique(scores), np.inf)
  pos, neg = np.sort(scores[labels]), np.sort(scores[~labels])
  tp = pos.size - np.searchsorted(pos, thresholds, side="left")  # positives ≥ threshold
  fp = neg.size - np.searchsorted(neg, thresholds, side="left")
  return thresholds, tp, fp


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, *, fpr: float = 0.01) -> float:
  """The highest TPR of any threshold whose FPR is ≤ `fpr` (Wen et al.'s "TPR@1%FPR").

  With n⁻ negatives, FPR ≤ 1% allows ⌊0.01 n⁻⌋ negatives above the threshold (none for n⁻ < 100).
  """
  if not 0.0 <= fpr <= 1.0:
    raise ValueError(f"fpr={fpr} must lie in [0, 1].")
  scores, labels = _checked(scores, labels)
  _, tp, fp = _counts(scores, labels)
  allowed = fp <= math.floor(fpr * int((~labels).sum()) + 1e-9)  # the +∞ threshold always qualifies
  return float(np.max(tp[allowed]) / int(labels.sum()))


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """(accuracy, threshold): the best share of correct calls of "positive iff score ≥ threshold"
  over every threshold (+∞ = call everything negative); the lowest such threshold on ties."""
  scores, labels = _checked(scores, labels)
  thresholds, tp, fp = _counts(scores, labels)
  correct = tp + int((~labels).sum()) - fp  # true positives + true negatives
  best = int(np.argmax(correct))  # the first (lowest) threshold among equals
  return float(correct[best] / labels.size), float(thresholds[best])


def detection_figures(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """{auc, tpr_at_1pct_fpr, best_accuracy, best_threshold} of `scores` for `labels` (the threshold
  None when calling everything negative is best: JSON has no ∞)."""
  acc, threshold = best_accuracy(scores, labels)
  return dict(auc=auc(scores, labels), tpr_at_1pct_fpr=tpr_at_fpr(scores, labels, fpr=0.01),
              best_accuracy=acc, best_threshold=threshold if math.isfinite(threshold) else None)
