import numpy as np
import pytest
import tensorflow_datasets as tfds

from minidiff.data import datasets as data


def test_offline_mnist_is_the_real_subset():
  ds = data.load_offline_mnist()
  assert ds.images.shape == (5000, 28, 28, 1) and ds.images.dtype == np.float32
  assert ds.images.min() == -1.0 and ds.images.max() == 1.0
  np.testing.assert_array_equal(np.bincount(ds.labels), [500] * 10)
  # MNIST digits are mostly background: ~80% of pixels are exactly 0 (→ −1).
  assert 0.7 < np.mean(ds.images == -1.0) < 0.9


def test_resize_keeps_range_and_is_deterministic():
  ds = data.load_dataset(data.OFFLINE_MNIST, resolution=16)
  assert ds.images.shape == (5000, 16, 16, 1)
  assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
  np.testing.assert_array_equal(data.load_dataset(data.OFFLINE_MNIST, resolution=16).images, ds.images)
  # A linear resize preserves the mean brightness up to the antialiasing at the borders.
  np.testing.assert_allclose(ds.images.mean(), data.load_offline_mnist().images.mean(), atol=0.02)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_path_under_mock_data(name, shape):
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load_dataset(name, split="train", data_dir="/nonexistent")
  assert ds.images.shape == (6,) + shape
  assert ds.images.dtype == np.float32 and -1.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert ds.labels.shape == (6,) and ds.num_classes == 10
  assert ds.labels.min() >= 0 and ds.labels.max() < 10


def test_tfds_missing_data_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="download_and_prepare"):
    data.load_tfds("fashion_mnist", data_dir=str(tmp_path))


def test_unknown_dataset():
  with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
    data.load_dataset("svhn")
  with pytest.raises(ValueError, match="one split"):
    data.load_dataset(data.OFFLINE_MNIST, split="test")
