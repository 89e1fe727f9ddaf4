"""Tests for minidiff.metrics.detection: exact ROC AUC with ties counted half."""
import numpy as np
import pytest

from minidiff.metrics import detection


def _pair_count_auc(scores, labels):
  pos, neg = scores[labels], scores[~labels]
  diff = pos[:, None] - neg[None, :]
  return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_perfect_reversed_and_tied():
  labels = np.array([0, 0, 1, 1, 1])
  assert detection.auc(np.array([0.1, 0.2, 0.5, 0.7, 0.9]), labels) == 1.0
  assert detection.auc(-np.array([0.1, 0.2, 0.5, 0.7, 0.9]), labels) == 0.0
  assert detection.auc(np.full(5, 3.0), labels) == 0.5


def test_hand_computed_case():
  # Positives {3, 1}, negatives {2, 1, 0}. Pairs (pos, neg): 3 beats all three (3);
  # 1 beats 0 (1), ties 1 (½), loses to 2 (0). AUC = (3 + 1 + 0.5) / 6 = 0.75.
  scores = np.array([3.0, 1.0, 2.0, 1.0, 0.0])
  labels = np.array([True, True, False, False, False])
  assert detection.auc(scores, labels) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_brute_force_pair_count(seed):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, 8, 300).astype(float)  # Many ties.
  labels = rng.random(300) < 0.3
  assert detection.auc(scores, labels) == pytest.approx(_pair_count_auc(scores, labels), abs=1e-12)
  scores = rng.normal(size=200) + labels[:200]
  assert detection.auc(scores, labels[:200]) == pytest.approx(
      _pair_count_auc(scores, labels[:200]), abs=1e-12)


def test_bad_input():
  with pytest.raises(ValueError, match="both classes"):
    detection.auc(np.array([1.0, 2.0]), np.array([1, 1]))
  with pytest.raises(ValueError, match="both classes"):
    detection.auc(np.array([]), np.array([], bool))
  with pytest.raises(ValueError, match="labels"):
    detection.auc(np.array([1.0, 2.0]), np.array([0, 2]))
  with pytest.raises(ValueError, match="Expected"):
    detection.auc(np.array([1.0, 2.0, 3.0]), np.array([0, 1]))
  with pytest.raises(ValueError, match="NaN"):
    detection.auc(np.array([np.nan, 2.0]), np.array([0, 1]))
