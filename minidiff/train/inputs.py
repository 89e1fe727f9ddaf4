"""What a config trains on: the duplicated training subset, each example's condition, the null condition."""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from minidiff import config as config_lib
from minidiff.data import captions as captions_lib
from minidiff.data import datasets as data_lib
from minidiff.data import tokenizer as tokenizer_lib
from minidiff.data.duplication import DuplicatedSubset, build_duplicated_subset


def load_training_data(config: ml_collections.ConfigDict) -> DuplicatedSubset:
  """The source dataset at the configured resolution, then the duplicated subset."""
  d = config.data
  source = data_lib.load_dataset(d.name, data_dir=d.data_dir or None, resolution=d.resolution)
  subset = build_duplicated_subset(source, config_lib.duplication_spec(config))
  if config_lib.is_text(config):  # unique captions for the duplicated images, class ones else
    subset = captions_lib.caption_subset(subset, d.name, seed=config.seed)
  return subset


def heldout_data(config: ml_collections.ConfigDict, manifest, *, per_class: int = 1000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Real images of the source dataset that the run did not train on (at most `per_class` of
  each class, a seeded draw): (images [H, ...], labels [H]). They calibrate the copy thresholds."""
  d = config.data
  source = data_lib.load_dataset(d.name, data_dir=d.data_dir or None, resolution=d.resolution)
  rest = np.setdiff1d(np.arange(len(source.labels)), np.asarray(manifest.source_index))
  rng = np.random.default_rng(seed)
  keep = np.concatenate([rng.permutation(rest[source.labels[rest] == c])[:per_class]
                         for c in np.unique(source.labels[rest])])
  keep.sort()
  return source.images[keep], source.labels[keep]


def null_condition(config: ml_collections.ConfigDict) -> int | np.ndarray:
  """The null condition of CFG: the null class id, or a text model's empty caption [max_tokens]."""
  unet = config_lib.unet_config(config)
  return tokenizer_lib.empty_caption(unet.max_tokens) if config_lib.is_text(config) else unet.null_id


def training_conditions(config: ml_collections.ConfigDict, subset: DuplicatedSubset,
                        workdir: str | None = None) -> tuple[np.ndarray, int | np.ndarray]:
  """(condition of every training example, null condition): class ids and the null id, or, for a
  text model, token ids [N, L] and the empty caption; the tokenizer is saved in `workdir`."""
  unet = config_lib.unet_config(config)
  if not config_lib.is_text(config):
    return subset.train.labels, unet.null_id
  tokenizer, tokens = captions_lib.tokenize_training_set(subset, max_len=unet.max_tokens,
                                                         vocab_size=unet.vocab_size)
  if workdir is not None:
    tokenizer.save(os.path.join(workdir, tokenizer_lib.FILENAME))
  return tokens, tokenizer.null_tokens
