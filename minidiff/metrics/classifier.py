"""The evaluation classifier: a small CNN trained on real images, cached on disk.

It measures two things about generated samples (docs/science.md §4): alignment (accuracy on the
class a sample was requested for) and quality (the Fréchet distance of its penultimate-layer features,
"Fréchet LeNet Distance" on MNIST, against held-out real images).

The data is split once, seeded and stratified: `n_heldout` images (100 per class on the offline
MNIST subset) are never trained on and serve as the accuracy check and the Fréchet reference.
Training is deterministic per seed (shuffling and shift augmentation use keys derived from it).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import serialization
from tqdm import tqdm

from minidiff.data import datasets as data_lib
from minidiff.metrics import frechet

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1


class ConvNet(nnx.Module):
  """conv-pool-conv-pool-conv-dense CNN (widths w, 2w, 4w; He init).

  `features` is the last hidden layer (ReLU, `feature_dim` wide), used for the Fréchet distance.
  """

  def __init__(self, *, resolution: int, channels: int = 1, num_classes: int = 10, width: int = 16,
               feature_dim: int = 128, rngs: nnx.Rngs):
    if resolution < 4:
      raise ValueError(f"resolution={resolution} is too small for two 2×2 poolings (need ≥ 4).")
    init = nnx.initializers.he_normal()
    self.conv1 = nnx.Conv(channels, width, (3, 3), kernel_init=init, rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), kernel_init=init, rngs=rngs)
    self.conv3 = nnx.Conv(2 * width, 4 * width, (3, 3), kernel_init=init, rngs=rngs)
    flat = (resolution // 4) ** 2 * 4 * width
    self.dense = nnx.Linear(flat, feature_dim, kernel_init=init, rngs=rngs)
    self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """Images [B, R, R, C] in [−1, 1] → penultimate features [B, feature_dim] (after ReLU)."""
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    x = nnx.relu(self.conv3(x))
    return nnx.relu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Images [B, R, R, C] → class logits [B, num_classes]."""
    return self.head(self.features(x))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Everything that changes the trained weights (and hence the cache key), besides the data."""

  epochs: int = 15
  batch_size: int = 32  # Small batches train fastest per image on XLA:CPU here.
  learning_rate: float = 3e-3
  warmup_fraction: float = 0.1
  weight_decay: float = 5e-2
  max_shift: int = 1
  width: int = 16
  feature_dim: int = 128
  n_heldout: int = 1500  # enough held-out images that ~half stay clean of a diffusion training set


def stratified_split(labels: np.ndarray, *, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded split keeping class proportions: returns sorted (train_idx, heldout_idx).

  Each class gets round(n_heldout · n_c / N) held-out images (largest remainder, so they sum to
  `n_heldout`), drawn at random within the class.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  if not 0 < n_heldout < n:
    raise ValueError(f"n_heldout={n_heldout} must lie in (0, {n}) for a dataset of {n} images.")
  classes, counts = np.unique(labels, return_counts=True)
  exact = n_heldout * counts / n
  quota = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - quota), kind="stable")[: n_heldout - quota.sum()]:
    quota[i] += 1
  rng = np.random.default_rng(seed)
  heldout = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
  heldout_idx = np.sort(np.concatenate(heldout))
  train_idx = np.setdiff1d(np.arange(n), heldout_idx)
  return train_idx, heldout_idx


def _random_shift(images: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each image by up to ±max_shift pixels per axis, filling with background (−1)."""
  if max_shift == 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                   constant_values=-1.0)
  offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


@functools.lru_cache(maxsize=8)
def _adamw(learning_rate: float, weight_decay: float, warmup: int,
           total: int) -> optax.GradientTransformation:
  """AdamW with a warmup-cosine schedule; cached so equal settings give an equal graphdef."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, total)
  return optax.adamw(schedule, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_shift"), donate_argnums=0)
def _train_step(state: nnx.State, x: jax.Array, y: jax.Array, key: jax.Array, *,
                graphdef: nnx.GraphDef, max_shift: int) -> tuple[nnx.State, jax.Array]:
  """One AdamW step on shifted images; `state` is the split (model, optimizer) state."""
  model, optimizer = nnx.merge(graphdef, state)
  x = _random_shift(x, key, max_shift)

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return nnx.state((model, optimizer)), loss


def train_convnet(images: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
                  settings: TrainSettings = TrainSettings()) -> ConvNet:
  """Trains a ConvNet with AdamW (warmup + cosine learning rate) and random-shift augmentation.

  Deterministic per seed: initialisation, epoch order and shifts all derive from `seed`.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[0] != labels.shape[0]:
    raise ValueError(f"Expected images [N, R, R, C] and labels [N]; got {images.shape} and "
                     f"{labels.shape}.")
  n = images.shape[0]
  batch = min(settings.batch_size, n)
  steps_per_epoch = n // batch
  total = settings.epochs * steps_per_epoch
  if total < 1:
    raise ValueError(f"No training steps: epochs={settings.epochs}, {n} images, batch {batch}.")
  model = ConvNet(resolution=images.shape[1], channels=images.shape[3], num_classes=num_classes,
                  width=settings.width, feature_dim=settings.feature_dim, rngs=nnx.Rngs(seed))
  warmup = int(settings.warmup_fraction * total)
  tx = _adamw(settings.learning_rate, settings.weight_decay, warmup, total)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
  key = jax.random.key(seed)
  order_rng = np.random.default_rng(seed)
  x_all, y_all = jnp.asarray(images), jnp.asarray(labels)
  bar = tqdm(total=settings.epochs, desc=f"evaluation classifier ({n} images)", unit="epoch",
             dynamic_ncols=True, mininterval=1.0)
  for epoch in range(settings.epochs):
    perm = order_rng.permutation(n)
    for i in range(steps_per_epoch):
      idx = jnp.asarray(perm[i * batch:(i + 1) * batch])
      state, loss = _train_step(state, x_all[idx], y_all[idx],
                                jax.random.fold_in(key, epoch * steps_per_epoch + i),
                                graphdef=graphdef, max_shift=settings.max_shift)
    bar.set_postfix(loss=f"{float(loss):.4f}")
    bar.update(1)
    logger.debug("classifier epoch %d: last batch loss %.4f", epoch, float(loss))
  bar.close()
  model, _ = nnx.merge(graphdef, state)
  return model


@functools.partial(jax.jit, static_argnames=("graphdef", "output"))
def _apply(params: nnx.State, x: jax.Array, *, graphdef: nnx.GraphDef, output: str) -> jax.Array:
  model = nnx.merge(graphdef, params)
  return model.features(x) if output == "features" else model(x)


@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
  """A trained ConvNet with jitted, batched inference and the held-out real images it never saw."""

  model: ConvNet
  resolution: int
  heldout_images: np.ndarray
  heldout_labels: np.ndarray
  heldout_accuracy: float
  metadata: dict[str, Any]
  batch_size: int = 500
  heldout_index: np.ndarray | None = None  # [n_heldout] indices of the held-out images in the dataset

  def __post_init__(self):
    graphdef, params = nnx.split(self.model)
    object.__setattr__(self, "_graphdef", graphdef)
    object.__setattr__(self, "_params", params)

  @property
  def loaded_from_cache(self) -> bool:
    """True when the weights were read from the cache, False when trained by this call."""
    return bool(self.metadata.get("loaded_from_cache", False))

  def _batched(self, output: str, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    channels = self.heldout_images.shape[-1]
    if images.ndim != 4 or images.shape[1:] != (self.resolution, self.resolution, channels):
      raise ValueError(f"Expected images [B, {self.resolution}, {self.resolution}, {channels}]; "
                       f"got {images.shape}.")
    if images.shape[0] == 0:
      raise ValueError("Expected at least one image; got an empty batch.")
    size = min(self.batch_size, images.shape[0])
    outs = []
    for start in range(0, images.shape[0], size):
      chunk = images[start:start + size]
      pad = size - chunk.shape[0]  # Pad the last chunk: one compiled shape.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
      out = _apply(self._params, jnp.asarray(chunk), graphdef=self._graphdef, output=output)
      outs.append(np.asarray(out)[: size - pad])
    return np.concatenate(outs)

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Images [B, R, R, C] in [−1, 1] → logits [B, num_classes] (float32 numpy)."""
    return self._batched("logits", images)

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Images [B, R, R, C] → predicted labels [B] (int32)."""
    return self.logits(images).argmax(axis=-1).astype(np.int32)

  def features(self, images: np.ndarray) -> np.ndarray:
    """Images [B, R, R, C] → penultimate-layer features [B, feature_dim] (float32 numpy)."""
    return self._batched("features", images)


def default_cache_dir() -> pathlib.Path:
  """`$MINIDIFF_CACHE`, else `~/.cache/minidiff`."""
  return pathlib.Path(os.environ.get("MINIDIFF_CACHE", "~/.cache/minidiff")).expanduser()


def compute_identity() -> dict[str, str]:
  """What besides the data and settings changes the trained weights: the jax version, the backend
  and the XLA flags (on this CPU, Eigen vs YNNPACK convolutions give other weights from one seed)."""
  return dict(jax=jax.__version__, backend=jax.default_backend(),
              xla_flags=os.environ.get("XLA_FLAGS", ""), minidiff_cpu=os.environ.get("MINIDIFF_CPU", ""))


def _cache_path(cache_dir: pathlib.Path, dataset: str, resolution: int, seed: int,
                settings: TrainSettings) -> pathlib.Path:
  blob = json.dumps([_FORMAT_VERSION, dataclasses.asdict(settings), compute_identity()], sort_keys=True)
  digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
  return cache_dir / "classifier" / f"{dataset}-r{resolution}-seed{seed}-{digest}"


def _write_atomically(path: pathlib.Path, payload: bytes) -> None:
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(payload)
  os.replace(tmp, path)


def load_or_train_classifier(*, resolution: int, cache_dir: str | os.PathLike | None = None,
                             seed: int = 0, dataset: str = data_lib.OFFLINE_MNIST,
                             settings: TrainSettings = TrainSettings()) -> Classifier:
  """Loads the classifier for (dataset, resolution, seed, settings) from the cache, or trains it.

  Trains on all images of `dataset` except a seeded stratified held-out split of
  `settings.n_heldout`, then saves the weights (flax msgpack) and `meta.json` (held-out accuracy,
  training time, settings) under `cache_dir/classifier/<dataset>-r<R>-seed<S>-<settings hash>/`.
  Logs which of the two happened; `Classifier.loaded_from_cache` says it too.
  """
  cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  ds = data_lib.load_dataset(dataset, resolution=resolution)
  train_idx, heldout_idx = stratified_split(ds.labels, n_heldout=settings.n_heldout, seed=seed)
  heldout_images, heldout_labels = ds.images[heldout_idx], ds.labels[heldout_idx]
  path = _cache_path(cache_dir, dataset, resolution, seed, settings)
  model = ConvNet(resolution=resolution, channels=ds.images.shape[-1], num_classes=ds.num_classes,
                  width=settings.width, feature_dim=settings.feature_dim, rngs=nnx.Rngs(seed))
  meta_file, params_file = path / "meta.json", path / "params.msgpack"
  if meta_file.exists() and params_file.exists():
    meta = json.loads(meta_file.read_text())
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, serialization.msgpack_restore(params_file.read_bytes()))
    nnx.update(model, params)
    meta["loaded_from_cache"] = True
    logger.info("Loaded classifier from %s (held-out accuracy %.4f).", path, meta["heldout_accuracy"])
  else:
    start = time.perf_counter()
    model = train_convnet(ds.images[train_idx], ds.labels[train_idx], num_classes=ds.num_classes,
                          seed=seed, settings=settings)
    seconds = time.perf_counter() - start
    probe = Classifier(model, resolution, heldout_images, heldout_labels, float("nan"), {})
    accuracy = float(np.mean(probe.predict(heldout_images) == heldout_labels))
    meta = {"dataset": dataset, "resolution": resolution, "seed": seed,
            "settings": dataclasses.asdict(settings), "n_train": int(train_idx.size),
            "n_heldout": int(heldout_idx.size), "heldout_accuracy": accuracy,
            "train_seconds": round(seconds, 2), "format_version": _FORMAT_VERSION}
    path.mkdir(parents=True, exist_ok=True)
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    _write_atomically(params_file, serialization.msgpack_serialize(pure))
    # Written last: its presence marks a complete entry.
    _write_atomically(meta_file, json.dumps(meta, indent=2).encode())
    meta["loaded_from_cache"] = False
    logger.info("Trained classifier in %.1f s, held-out accuracy %.4f; saved to %s.",
                seconds, accuracy, path)
  return Classifier(model, resolution, heldout_images, heldout_labels,
                    float(meta["heldout_accuracy"]), meta, heldout_index=heldout_idx)


def class_accuracy(classifier: Classifier, samples: np.ndarray, requested_labels: np.ndarray) -> float:
  """Fraction of samples that the classifier assigns to the class they were requested for."""
  requested_labels = np.asarray(requested_labels)
  if requested_labels.shape != (np.shape(samples)[0],):
    raise ValueError(f"Expected requested_labels [{np.shape(samples)[0]}]; "
                     f"got {requested_labels.shape}.")
  return float(np.mean(classifier.predict(samples) == requested_labels))


def frechet_to_heldout(classifier: Classifier, samples: np.ndarray) -> tuple[float, int, int]:
  """Fréchet distance of the samples' features to the held-out real images' features.

  Returns (distance, n_samples, n_reference): the counts move the number, so report them with it.
  """
  sample_features = classifier.features(samples)
  reference_features = classifier.features(classifier.heldout_images)
  distance = frechet.frechet_distance(sample_features, reference_features)
  return distance, int(sample_features.shape[0]), int(reference_features.shape[0])


def clean_reference(classifier: Classifier, *, exclude: np.ndarray, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Features of the held-out images that are not in `exclude` (e.g. the diffusion model's
  training images, as dataset indices), split at random into two disjoint halves:
  (reference [R, F], floor pool [P, F]). Samples are scored against the reference; the pool gives
  the FD of real images at the same n (the floor below which FD differences mean nothing).

  Raises ValueError when fewer than 20 clean held-out images remain.
  """
  if classifier.heldout_index is None:
    raise ValueError("This classifier does not know its held-out indices; load it with "
                     "load_or_train_classifier.")
  clean = np.flatnonzero(~np.isin(classifier.heldout_index, np.asarray(exclude)))
  if len(clean) < 20:
    raise ValueError(f"Only {len(clean)} held-out images are not in the diffusion training set; "
                     f"raise TrainSettings.n_heldout.")
  order = np.random.default_rng(seed).permutation(clean)
  half = len(order) // 2
  features = classifier.features(classifier.heldout_images[order])
  return features[:half], features[half:]
