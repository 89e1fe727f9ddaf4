"""Detection quality of a per-sample score: exact ROC AUC (Mann–Whitney U).

Wen et al. (ICLR 2024) detect memorization with the mean over sampling steps of
d_t = ‖ε_c − ε_u‖ per sample: higher for memorized conditions. `auc(scores, labels)` measures how
well such a score separates positives (copies, or conditions with duplicated images) from negatives.
"""
from __future__ import annotations

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
