"""MNIST / Fashion-MNIST from IDX files and CIFAR-10 / CIFAR-100 from the python tarball, built
here as small fake files in those exact formats; the config accepts them through data.data_dir."""
import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from minidiff import config as config_lib
from minidiff.data import datasets


def _idx(array: np.ndarray) -> bytes:
  """IDX bytes: 00 00, type 0x08 (uint8), ndim, each dimension as big-endian uint32, the data."""
  return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx_set(folder, n_train=12, n_test=5, *, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  out = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
      path = os.path.join(folder, f"{prefix}-{kind}" + (".gz" if gz else ""))
      with (gzip.open if gz else open)(path, "wb") as f:
        f.write(_idx(arr))
    out[prefix] = (images, labels)
  return out


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files(tmp_path, gz):
  raw = _write_idx_set(str(tmp_path), gz=gz)
  ds = datasets.load_dataset("mnist", data_dir=str(tmp_path))
  assert ds.images.shape == (12, 28, 28, 1) and ds.num_classes == 10
  np.testing.assert_array_equal(ds.labels, raw["train"][1])
  np.testing.assert_allclose(ds.images[..., 0], raw["train"][0] / 127.5 - 1.0, atol=1e-6)  # 0…255 → [−1, 1]
  test = datasets.load_dataset("mnist", split="test", data_dir=str(tmp_path), resolution=8)
  assert test.images.shape == (5, 8, 8, 1)


def test_fashion_mnist_from_its_own_subfolder(tmp_path):
  _write_idx_set(str(tmp_path / "mnist"), seed=0)
  fashion = _write_idx_set(str(tmp_path / "fashion_mnist"), n_train=7, seed=1)
  ds = datasets.load_dataset("fashion_mnist", data_dir=str(tmp_path))
  assert len(ds) == 7 and ds.name == "fashion_mnist"
  np.testing.assert_array_equal(ds.labels, fashion["train"][1])


def test_bad_idx_files_say_what_is_wrong(tmp_path):
  (tmp_path / "x").write_bytes(b"\x1f\x8b\x08\x00junk")
  with pytest.raises(ValueError, match="not an IDX file"):
    datasets.read_idx(str(tmp_path / "x"))
  (tmp_path / "cut").write_bytes(_idx(np.zeros((3, 28, 28), np.uint8))[:-10])
  with pytest.raises(ValueError, match="cut short"):
    datasets.read_idx(str(tmp_path / "cut"))


def _cifar_batch(n, seed, labels_key):
  rng = np.random.default_rng(seed)
  data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
  return {b"data": data, labels_key: list(rng.integers(0, 10, n))}, data


def _write_cifar(tmp_path, name, *, extracted=False):
  folder = datasets.CIFAR_FILES[name][1]
  key = b"labels" if name == "cifar10" else b"fine_labels"
  batches = {b: _cifar_batch(3, i, key) for i, b in enumerate(
      datasets.CIFAR_BATCHES[name]["train"] + datasets.CIFAR_BATCHES[name]["test"])}
  if extracted:
    os.makedirs(tmp_path / folder)
    for b, (d, _) in batches.items():
      (tmp_path / folder / b).write_bytes(pickle.dumps(d))
  else:
    with tarfile.open(tmp_path / datasets.CIFAR_FILES[name][0], "w:gz") as tar:
      for b, (d, _) in batches.items():
        blob = pickle.dumps(d)
        info = tarfile.TarInfo(f"{folder}/{b}")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
  return batches


@pytest.mark.parametrize("name,extracted", [("cifar10", False), ("cifar10", True), ("cifar100", False)])
def test_cifar_from_the_python_tarball(tmp_path, name, extracted):
  batches = _write_cifar(tmp_path, name, extracted=extracted)
  ds = datasets.load_dataset(name, data_dir=str(tmp_path))
  n_train = 3 * len(datasets.CIFAR_BATCHES[name]["train"])
  assert ds.images.shape == (n_train, 32, 32, 3) and ds.num_classes == datasets.NUM_CLASSES[name]
  first, data = batches[datasets.CIFAR_BATCHES[name]["train"][0]]
  # Row layout: 1024 red, 1024 green, 1024 blue values, each 32×32 row-major → pixel (y, x) RGB.
  y, x = 5, 17
  rgb = data[0, [y * 32 + x, 1024 + y * 32 + x, 2048 + y * 32 + x]]
  np.testing.assert_allclose(ds.images[0, y, x], rgb / 127.5 - 1.0, atol=1e-6)
  key = "labels" if name == "cifar10" else "fine_labels"
  np.testing.assert_array_equal(ds.labels[:3], first[key.encode()])
  test = datasets.load_dataset(name, split="test", data_dir=str(tmp_path))
  assert len(test) == 3


def test_missing_files_say_which_files_to_put_where(tmp_path):
  with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
    datasets.load_dataset("cifar10", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    datasets.load_dataset("mnist", data_dir=str(tmp_path))


def test_config_takes_cifar100_and_an_old_config_without_data_dir(tiny_config):
  tiny_config.data.name, tiny_config.data.channels = "cifar100", 3
  tiny_config.data.duplicated_classes = (0, 1)
  assert config_lib.unet_config(config_lib.validate_config(tiny_config)).num_classes == 100
  del tiny_config.data["data_dir"]  # a config saved before the field: "" (the defaults)
  assert config_lib.sections(tiny_config).data.data_dir == ""
  assert config_lib.ADDED_FIELD_DEFAULTS["data.data_dir"] == ""
