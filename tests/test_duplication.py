import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from minidiff.data.datasets import Dataset
from minidiff.data.duplication import DuplicationSpec, Manifest, build_duplicated_subset


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


@st.composite
def _sources_and_specs(draw):
  """A small synthetic dataset (2–5 classes, 3–12 images each) and a valid spec for it."""
  counts = draw(st.lists(st.integers(3, 12), min_size=2, max_size=5))
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  images = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)  # image i is the number i
  source = Dataset(images, labels, "synthetic", len(counts))
  n_unique = draw(st.integers(1, min(counts)))
  dup_factor = draw(st.integers(2, 6))
  seed = draw(st.integers(0, 2**31 - 1))
  if draw(st.booleans()):  # Somepalli et al.: a fraction of all unique images
    total = n_unique * len(counts)
    k = draw(st.integers(1, total))
    spec = DuplicationSpec(n_unique, dup_factor=dup_factor, dup_fraction=k / total, seed=seed)
  else:
    classes = draw(st.none() | st.lists(st.integers(0, len(counts) - 1), unique=True).map(tuple))
    spec = DuplicationSpec(n_unique, draw(st.integers(0, n_unique)), dup_factor,
                           duplicated_classes=classes, seed=seed)
  return source, spec


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
@hypothesis.given(case=_sources_and_specs())
def test_property_counts_and_manifest_consistent_for_any_valid_spec(case):
  source, spec = case
  sub = build_duplicated_subset(source, spec)
  m = sub.manifest
  n_classes, n_unique = source.num_classes, spec.n_unique_per_class * source.num_classes
  if spec.dup_fraction > 0:
    expected_dup = round(spec.dup_fraction * n_unique)
  else:
    dup_classes = range(n_classes) if spec.duplicated_classes is None else spec.duplicated_classes
    expected_dup = spec.num_duplicated_per_class * len(dup_classes) if dup_classes else 0
    per_class = np.bincount(m.label[m.is_duplicated], minlength=n_classes)
    assert all(per_class[c] == (spec.num_duplicated_per_class if c in dup_classes else 0)
               for c in range(n_classes))
  assert len(sub.unique_images) == n_unique and m.is_duplicated.sum() == expected_dup
  np.testing.assert_array_equal(np.bincount(m.label, minlength=n_classes),
                                [spec.n_unique_per_class] * n_classes)
  np.testing.assert_array_equal(m.copies, np.where(m.is_duplicated, spec.dup_factor, 1))
  np.testing.assert_array_equal(np.bincount(m.unique_id, minlength=n_unique), m.copies)
  assert len(sub.train) == m.copies.sum() == n_unique + expected_dup * (spec.dup_factor - 1)
  assert len(np.unique(m.source_index)) == n_unique  # unique images are distinct source images
  np.testing.assert_array_equal(source.labels[m.source_index], m.label)
  np.testing.assert_array_equal(sub.train.images[:, 0, 0, 0], m.source_index[m.unique_id])
  np.testing.assert_array_equal(sub.train.labels, m.label[m.unique_id])
  back = Manifest.from_json(json.loads(json.dumps(m.to_json())))
  for field in ("unique_id", "source_index", "label", "is_duplicated", "copies"):
    np.testing.assert_array_equal(getattr(back, field), getattr(m, field))


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
@hypothesis.given(n_unique=st.integers(-1, 12), n_dup=st.integers(-1, 13), factor=st.integers(-1, 4),
                  fraction=st.floats(-0.5, 1.5),
                  classes=st.none() | st.lists(st.integers(-2, 4)).map(tuple))
def test_property_any_spec_builds_or_is_a_value_error(source, n_unique, n_dup, factor, fraction,
                                                       classes):
  spec = DuplicationSpec(n_unique, n_dup, factor, fraction, classes, seed=0)
  try:
    sub = build_duplicated_subset(source, spec)
  except ValueError:
    return
  assert len(sub.train) == sub.manifest.copies.sum() >= len(sub.unique_images) == 3 * n_unique
