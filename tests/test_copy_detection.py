"""The calibrated copy scores: closed forms, calibration by construction, and the known answers."""
import numpy as np
import pytest

from configs import mnist_dup
from minidiff.metrics import copy_benchmark as cb
from minidiff.metrics import copy_detection as cd
from minidiff.train import inputs

# Pixel L2 of the default model's CFG w = 7.5 samples to their class's duplicated image, the
# largest per memorized class (every such sample is visibly the duplicate; measured with
# `scripts/copy_benchmark.py --study runs/mnist_dup/study` on the README's main job, 2026-12-07).
MODEL_COPY_DISTANCE = {0: 2.43, 1: 1.49}


@pytest.fixture(scope="module")
def default_data():
  config = mnist_dup.get_config()
  subset = inputs.load_training_data(config)
  heldout = inputs.heldout_data(config, subset.manifest, per_class=10_000)
  return subset, heldout


def test_threshold_lets_at_most_fpr_of_the_negatives_through():
  scores = np.arange(1.0, 201.0)  # 200 negatives: ⌊0.01 · 200⌋ = 2 may exceed θ, so θ = 198
  theta = cd.threshold_at_fpr(scores, fpr=0.01)
  assert theta == 198.0 and np.sum(scores > theta) == 2
  assert cd.threshold_at_fpr(scores, fpr=0.0) == 200.0  # none may exceed
  with pytest.raises(ValueError, match="fpr"):
    cd.threshold_at_fpr(scores, fpr=1.0)


def test_shifted_moves_the_content_and_fills_with_the_background():
  x = np.full((1, 4, 4, 1), -1.0, np.float32)
  x[0, 1, 2] = 1.0
  y = cd.shifted(x, 1, -1)
  assert y[0, 2, 1, 0] == 1.0 and y.sum() == x.sum()


def test_named_scores_of_a_copy_and_of_a_shifted_copy(default_data):
  subset, _ = default_data
  u = int(subset.manifest.duplicated_ids[0])
  image = subset.unique_images[u]
  copies = np.stack([image, cd.shifted(image[None], 0, 1)[0]])
  s = cd.score_samples(copies, subset.unique_images, target=np.array([u, u]))
  assert s.target_distance[0] == 0.0 and s.nn_index[0, 0] == u
  assert s.target_ncc[0] == pytest.approx(1.0) and s.target_ncc_shift[0] == pytest.approx(1.0)
  # Moved by a pixel, the plain correlation drops; the best shift finds the image again.
  assert s.target_ncc[1] < 0.95 and s.target_ncc_shift[1] == pytest.approx(1.0)
  assert s.ncc_shift_index[1] == u
  np.testing.assert_allclose(cd.named_scores("ncc_named_shift", copies, image), s.target_ncc_shift)


def test_study_calibration_flags_at_most_fpr_of_its_negatives(default_data):
  subset, (held, held_labels) = default_data
  man = subset.manifest
  targets = np.asarray(man.duplicated_ids)
  cal = cd.calibrate_study(subset.unique_images, man.label, held, held_labels, targets)
  for u in targets:  # the negatives of u's class, scored against u, as the calibration saw them
    rows = held_labels == man.label[u]
    s = cd.score_samples(held[rows], subset.unique_images, target=np.full(rows.sum(), u))
    assert cal.copy(s).mean() <= 0.01
  no_target = cd.score_samples(subset.unique_images[targets], subset.unique_images)
  assert not cal.copy(no_target).any()  # a condition that names no image is never a copy of it
  with pytest.raises(ValueError, match="held-out images of class"):
    cd.calibrate_study(subset.unique_images, man.label, held[:40], held_labels[:40], targets)


def test_primary_metric_finds_the_known_copies_at_one_percent_false_positives(default_data):
  """The issue's bar: at 16×16, TPR ≥ 0.95 at FPR ≤ 0.01 on the positives no further from their
  image than the model's own copies are (stronger corruptions are reported, not tested)."""
  subset, (held, held_labels) = default_data
  man = subset.manifest
  sources = cb.choose_sources(man.label, man.is_duplicated, per_class=3)
  positives = cb.corrupted_positives(subset.unique_images, sources)
  r = cb.run_benchmark(subset.unique_images, man.label, man.is_duplicated, held, held_labels,
                       positives=positives, copy_distance=MODEL_COPY_DISTANCE,
                       scores=("ratio", cd.PRIMARY_NAMED))
  primary = r["metrics"][cd.PRIMARY_NAMED]
  assert primary["within_copy_distance"]["all"]["tpr"] >= 0.95
  assert primary["within_copy_distance"]["all"]["n"] >= 50
  assert primary["fpr_heldout"] <= 0.02  # measured on the half the threshold never saw
  assert primary["by_kind"]["shift:1"]["tpr"] >= 0.95  # one-pixel shifts are still copies
  # Why the ratio test was replaced: on the same known copies it misses many more.
  assert r["metrics"]["ratio"]["within_copy_distance"]["all"]["tpr"] < primary[
      "within_copy_distance"]["all"]["tpr"] - 0.2


def test_a_class_with_several_duplicates_names_them_all_and_a_copy_of_any_counts(default_data):
  import dataclasses
  from minidiff.study import conditions as conditions_lib
  from minidiff.study import evaluation
  subset, heldout = default_data
  man = subset.manifest
  dup = man.is_duplicated.copy()
  second = int(np.flatnonzero((man.label == 0) & ~dup)[0])
  dup[second] = True  # class 0 now names two images
  man2 = dataclasses.replace(man, is_duplicated=dup)
  cs = conditions_lib.class_conditions(man2, num=6, num_classes=10, null_id=10, classes=(0, 0, 1))
  first = int(np.flatnonzero(dup & (man.label == 0))[0])
  assert cs.named_images.shape == (6, 2) and cs.target_image[0] == first
  assert set(cs.named_images[0].tolist()) == {first, second} and cs.named_images[2, 1] == -1
  ctx = evaluation.calibrated_context(cs, subset.unique_images, man.label, dup, heldout)
  samples = subset.unique_images[[second, first, man.duplicated_ids[1], 5, 6, 7]]
  m = evaluation.measure(ctx, samples)
  assert m.scores.target[:3].tolist() == [second, first, int(man.duplicated_ids[1])]
  assert evaluation.flags(ctx, m)["copy"][:3].all()  # a copy of either named image counts
