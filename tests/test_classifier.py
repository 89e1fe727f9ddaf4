"""Tests for minidiff.metrics.classifier: accuracy, the cache round trip, features, determinism."""
import dataclasses
import logging

import jax
import numpy as np
import pytest
from flax import nnx

from minidiff.metrics import classifier as clf_lib


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("minidiff_cache")


@pytest.fixture(scope="module")
def trained(cache_dir):
  """Trains the default 16×16 classifier once into a temporary cache (the slow part, ~20–40 s)."""
  return clf_lib.load_or_train_classifier(resolution=16, cache_dir=cache_dir, seed=0)


def test_heldout_accuracy_at_least_97_percent(trained):
  assert not trained.loaded_from_cache
  assert trained.heldout_images.shape == (1500, 16, 16, 1)
  np.testing.assert_array_equal(np.bincount(trained.heldout_labels), np.full(10, 150))
  accuracy = clf_lib.class_accuracy(trained, trained.heldout_images, trained.heldout_labels)
  assert accuracy == trained.heldout_accuracy
  assert accuracy >= 0.97, accuracy


def test_cache_round_trip_does_not_train(trained, cache_dir, monkeypatch, caplog):
  def fail(*args, **kwargs):
    raise AssertionError("train_convnet was called although the classifier is cached")

  monkeypatch.setattr(clf_lib, "train_convnet", fail)
  with caplog.at_level(logging.INFO, logger="minidiff.metrics.classifier"):
    loaded = clf_lib.load_or_train_classifier(resolution=16, cache_dir=cache_dir, seed=0)
  assert loaded.loaded_from_cache and "Loaded classifier" in caplog.text
  assert loaded.heldout_accuracy == trained.heldout_accuracy
  assert loaded.metadata["settings"] == dataclasses.asdict(clf_lib.TrainSettings())
  np.testing.assert_array_equal(loaded.heldout_labels, trained.heldout_labels)
  np.testing.assert_array_equal(loaded.logits(trained.heldout_images[:64]),
                                trained.logits(trained.heldout_images[:64]))


def test_outputs_shapes_and_batching(trained):
  images = trained.heldout_images[:23]
  assert trained.logits(images).shape == (23, 10)
  assert trained.predict(images).dtype == np.int32
  features = trained.features(images)
  assert features.shape == (23, 128) and np.all(features >= 0) and np.all(np.isfinite(features))
  small_batches = dataclasses.replace(trained, batch_size=5)  # 5 batches, the last one padded.
  np.testing.assert_allclose(small_batches.features(images), features, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="Expected images"):
    trained.features(np.zeros((3, 28, 28, 1), np.float32))
  with pytest.raises(ValueError, match="requested_labels"):
    clf_lib.class_accuracy(trained, images, np.zeros(3, int))


def test_frechet_to_heldout(trained):
  distance, n_samples, n_reference = clf_lib.frechet_to_heldout(trained, trained.heldout_images)
  assert (n_samples, n_reference) == (1500, 1500) and distance == pytest.approx(0.0, abs=1e-6)
  noise = np.random.default_rng(0).uniform(-1, 1, (200, 16, 16, 1)).astype(np.float32)
  far, n_samples, _ = clf_lib.frechet_to_heldout(trained, noise)
  # Every 5th held-out image keeps all classes (the split is sorted by label, like the data).
  near, _, _ = clf_lib.frechet_to_heldout(trained, trained.heldout_images[::5])
  assert n_samples == 200 and far > 10 * near > 0


def test_training_is_deterministic_per_seed():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (96, 8, 8, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 96).astype(np.int32)
  settings = clf_lib.TrainSettings(epochs=2, batch_size=32, width=4, feature_dim=8)
  params = lambda seed: nnx.state(clf_lib.train_convnet(images, labels, num_classes=10, seed=seed,
                                                        settings=settings), nnx.Param)
  first, again, other = params(0), params(0), params(1)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, first, other)))


def test_stratified_split():
  labels = np.repeat(np.arange(10), 50)
  train, heldout = clf_lib.stratified_split(labels, n_heldout=100, seed=3)
  assert len(np.intersect1d(train, heldout)) == 0 and len(train) + len(heldout) == 500
  np.testing.assert_array_equal(np.bincount(labels[heldout]), np.full(10, 10))
  again, _ = clf_lib.stratified_split(labels, n_heldout=100, seed=3)
  np.testing.assert_array_equal(train, again)
  with pytest.raises(ValueError, match="n_heldout"):
    clf_lib.stratified_split(labels, n_heldout=500, seed=0)


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path))
  assert clf_lib.default_cache_dir() == tmp_path
  monkeypatch.delenv("MINIDIFF_CACHE")
  assert str(clf_lib.default_cache_dir()).endswith(".cache/minidiff")


def test_fd_reference_leaves_out_the_diffusion_training_images(trained):
  exclude = trained.heldout_index[::3]  # a third of the held-out images "trained on"
  reference, pool = clf_lib.clean_reference(trained, exclude=exclude, seed=0)
  clean = len(trained.heldout_index) - len(exclude)
  assert len(reference) + len(pool) == clean and abs(len(reference) - len(pool)) <= 1
  feats = trained.features(trained.heldout_images)
  excluded = feats[np.isin(trained.heldout_index, exclude)]
  # No reference or pool row is the feature vector of an excluded image.
  for rows in (reference, pool):
    d = np.abs(rows[:, None, :] - excluded[None, :, :]).max(axis=2)
    assert d.min() > 0
  with pytest.raises(ValueError, match="not in the diffusion training set"):
    clf_lib.clean_reference(trained, exclude=trained.heldout_index[5:], seed=0)


def test_cache_key_changes_with_what_changes_the_weights(tmp_path, monkeypatch):
  settings = clf_lib.TrainSettings()
  monkeypatch.setenv("XLA_FLAGS", "--a")
  a = clf_lib._cache_path(tmp_path, "mnist_offline", 16, 0, settings)
  monkeypatch.setenv("XLA_FLAGS", "--b")  # e.g. Eigen vs YNNPACK convolutions
  b = clf_lib._cache_path(tmp_path, "mnist_offline", 16, 0, settings)
  assert a != b
  assert clf_lib.compute_identity()["xla_flags"] == "--b"
