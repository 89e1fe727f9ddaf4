"""Wen et al.'s detection figures beside the AUC (minidiff.metrics.detection): TPR at 1% FPR and the
accuracy at the best threshold, with hand-computed expectations."""
import numpy as np
import pytest

from minidiff.metrics import detection
from minidiff.study import evaluation


def test_perfect_reversed_and_tied_scores():
  labels = np.asarray([1, 1, 0, 0, 0], bool)
  perfect = np.asarray([5.0, 4.0, 3.0, 2.0, 1.0])
  assert detection.tpr_at_fpr(perfect, labels) == 1.0
  assert detection.best_accuracy(perfect, labels) == (1.0, 4.0)  # "≥ 4" calls exactly the two
  reversed_ = -perfect
  assert detection.tpr_at_fpr(reversed_, labels) == 0.0  # every threshold with a TP has an FP
  assert detection.best_accuracy(reversed_, labels) == (0.6, np.inf)  # all negative: 3 of 5
  tied = np.ones(5)
  assert detection.tpr_at_fpr(tied, labels) == 0.0 and detection.best_accuracy(tied, labels)[0] == 0.6


def test_tpr_at_fpr_by_hand():
  # 200 negatives 0 … 199, 4 positives at 198.5, 150.5, 100.5, 10.5. FPR ≤ 1% allows 2 negatives
  # above the threshold: "≥ 198" lets in 198 and 199 (FPR 1%) and catches one positive (TPR ¼).
  neg = np.arange(200.0)
  pos = np.asarray([198.5, 150.5, 100.5, 10.5])
  scores = np.concatenate([pos, neg])
  labels = np.concatenate([np.ones(4, bool), np.zeros(200, bool)])
  assert detection.tpr_at_fpr(scores, labels, fpr=0.01) == 0.25
  assert detection.tpr_at_fpr(scores, labels, fpr=0.25) == 0.5  # 50 negatives ≥ 150: 150.5, 198.5
  assert detection.tpr_at_fpr(scores, labels, fpr=1.0) == 1.0
  # best accuracy: "≥ 198.5" (1 TP, 1 FP: 200/204) ties with calling nothing positive (200/204);
  # the lower threshold is reported
  acc, threshold = detection.best_accuracy(scores, labels)
  assert acc == 200 / 204 and threshold == 198.5
  figs = detection.detection_figures(scores, labels)
  assert figs["auc"] == pytest.approx(detection.auc(scores, labels))
  assert figs["tpr_at_1pct_fpr"] == 0.25 and figs["best_accuracy"] == 200 / 204


def test_bad_input_is_one_clear_error():
  with pytest.raises(ValueError, match="both classes"):
    detection.tpr_at_fpr(np.ones(3), np.ones(3, bool))
  with pytest.raises(ValueError, match="fpr"):
    detection.tpr_at_fpr(np.ones(2), np.asarray([True, False]), fpr=2.0)


def test_study_detection_block_covers_the_eps_and_x0_scores():
  rng = np.random.default_rng(0)
  d_eps = rng.uniform(size=(4, 6))
  d_eps[:, :3] += 2.0  # the first three samples (memorized) score higher at every step
  d_x0 = d_eps * np.asarray([0.1, 1.0, 2.0, 3.0])[:, None]
  memorized = np.asarray([1, 1, 1, 0, 0, 0], bool)
  out = evaluation.detection_figures(d_eps, d_x0, dict(memorized=memorized, none=np.zeros(6, bool)))
  assert set(out["memorized"]) == set(evaluation.DETECTION_SCORES)
  for name, figs in out["memorized"].items():
    assert figs["auc"] == 1.0 and figs["tpr_at_1pct_fpr"] == 1.0 and figs["best_accuracy"] == 1.0
  assert all(v is None for v in out["none"].values())  # an empty group has no figures
