import numpy as np
import pytest

from minidiff.data import Dataset
from minidiff.duplication import DuplicationSpec, Manifest, build_duplicated_subset


@pytest.fixture(scope="module")
def source():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 10).astype(np.int32)
  images = rng.uniform(-1, 1, (30, 4, 4, 1)).astype(np.float32)
  return Dataset(images, labels, "toy", 3)


def test_counts_and_manifest(source):
  spec = DuplicationSpec(n_unique_per_class=5, num_duplicated_per_class=2, dup_factor=4,
                         duplicated_classes=(0, 2), seed=1)
  sub = build_duplicated_subset(source, spec)
  m = sub.manifest
  # 15 unique images; classes 0 and 2 each repeat 2 images ×4 → 15 + 2·2·3 = 27 examples.
  assert len(sub.unique_images) == 15 and len(sub.train) == 27
  assert m.is_duplicated.sum() == 4
  assert set(m.label[m.is_duplicated]) == {0, 2}
  np.testing.assert_array_equal(np.bincount(m.unique_id, minlength=15), m.copies)
  np.testing.assert_array_equal(m.copies, np.where(m.is_duplicated, 4, 1))
  # Each training example is its unique image, whose source image has the same label.
  np.testing.assert_array_equal(sub.train.images, sub.unique_images[m.unique_id])
  np.testing.assert_array_equal(sub.unique_images, source.images[m.source_index])
  np.testing.assert_array_equal(source.labels[m.source_index], m.label)
  np.testing.assert_array_equal(sub.train.labels, m.label[m.unique_id])
  assert len(set(m.source_index.tolist())) == 15  # unique really means unique


def test_deterministic_per_seed(source):
  a = build_duplicated_subset(source, DuplicationSpec(5, 1, 3, seed=7))
  b = build_duplicated_subset(source, DuplicationSpec(5, 1, 3, seed=7))
  c = build_duplicated_subset(source, DuplicationSpec(5, 1, 3, seed=8))
  np.testing.assert_array_equal(a.manifest.unique_id, b.manifest.unique_id)
  np.testing.assert_array_equal(a.manifest.source_index, b.manifest.source_index)
  assert not np.array_equal(a.manifest.source_index, c.manifest.source_index)


def test_fraction_mode_somepalli(source):
  # 5% of 30 unique images (rounded: 2) repeated ×5 → 30 + 2·4 examples.
  sub = build_duplicated_subset(source, DuplicationSpec(10, dup_fraction=0.05, dup_factor=5, seed=0))
  assert sub.manifest.is_duplicated.sum() == round(0.05 * 30)
  assert len(sub.train) == 30 + 4 * round(0.05 * 30)


def test_manifest_json_round_trip(source, tmp_path):
  m = build_duplicated_subset(source, DuplicationSpec(4, 1, 2, seed=0)).manifest
  m.save(str(tmp_path / "manifest.json"))
  r = Manifest.load(str(tmp_path / "manifest.json"))
  for f in ("unique_id", "source_index", "label", "is_duplicated", "copies"):
    np.testing.assert_array_equal(getattr(m, f), getattr(r, f))
  np.testing.assert_array_equal(r.duplicated_ids, np.flatnonzero(m.is_duplicated))


@pytest.mark.parametrize("spec, match", [
    (DuplicationSpec(11), "has 10 images"),
    (DuplicationSpec(5, num_duplicated_per_class=6, dup_factor=2), "num_duplicated_per_class"),
    (DuplicationSpec(5, num_duplicated_per_class=1, dup_factor=1), "dup_factor ≥ 2"),
    (DuplicationSpec(5, dup_factor=0), "dup_factor"),
    (DuplicationSpec(5, num_duplicated_per_class=1, dup_fraction=0.1, dup_factor=2), "not both"),
    (DuplicationSpec(5, 1, 2, duplicated_classes=(3,)), "outside"),
    (DuplicationSpec(0), "n_unique_per_class"),
])
def test_bad_settings(source, spec, match):
  with pytest.raises(ValueError, match=match):
    build_duplicated_subset(source, spec)
