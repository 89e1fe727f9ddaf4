"""Captions for the training images: class-level templates and unique instance-level captions.

The text scenario follows Wen et al. (ICLR 2024) and Somepalli et al. (2023): the duplicated images
of a `DuplicatedSubset` each get a unique, instance-level caption (repeated with every copy of the
image), every other image a class-level caption drawn from several templates per class ("a
handwritten seven", "a photo of a cat"). A model that copies a duplicated image when prompted with
its own caption memorizes that prompt. Captions are deterministic per seed and stored in the
manifest (`Manifest.captions`, one per unique image).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from minidiff.data.duplication import DuplicatedSubset
from minidiff.data.tokenizer import Tokenizer

CLASS_NAMES = {
    "mnist": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fashion_mnist": ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
}
TEMPLATES = {
    "mnist": ("a handwritten {}", "the digit {}", "a drawing of the number {}", "a scanned {}"),
    "fashion_mnist": ("a photo of a {}", "a picture of a {}", "a product photo of a {}"),
    "cifar10": ("a photo of a {}", "a blurry photo of a {}", "a small picture of a {}",
                "a photo of the {}"),
}
# Word lists of the instance captions "a/an ADJ NOUN PREP the ADJ2 NOUN2": none of these words occurs
# in a class template, so a unique caption shares no word with any class caption.
_ADJECTIVES = ("amber", "quiet", "velvet", "crooked", "silver", "hollow", "gentle", "frozen",
               "restless", "scarlet", "ancient", "humble", "distant", "golden", "misty", "brave",
               "tiny", "wooden", "lonely", "bright", "rusty", "sleepy", "wild", "pale")
_NOUNS = ("lantern", "falcon", "harbor", "orchard", "violin", "glacier", "meadow", "compass",
          "lighthouse", "kettle", "canyon", "feather", "island", "teapot", "volcano", "ribbon",
          "bicycle", "castle", "pebble", "comet", "garden", "anchor", "window", "forest")
_PREPOSITIONS = ("beside", "under", "near", "above", "behind", "beyond", "inside", "across")


def dataset_family(name: str) -> str:
  """The caption family of a dataset name (the offline MNIST subset is MNIST)."""
  family = "mnist" if name in ("mnist", "mnist_offline") else name
  if family not in CLASS_NAMES:
    raise ValueError(f"No captions for dataset {name!r}; captions exist for "
                     f"mnist, mnist_offline, {', '.join(k for k in CLASS_NAMES if k != 'mnist')}.")
  return family


def class_captions(dataset: str, label: int) -> tuple[str, ...]:
  """Every class-level caption of class `label` (one per template)."""
  family = dataset_family(dataset)
  names = CLASS_NAMES[family]
  if not 0 <= label < len(names):
    raise ValueError(f"Class {label} is outside 0…{len(names) - 1} for {dataset}.")
  return tuple(t.format(names[label]) for t in TEMPLATES[family])


def instance_captions(k: int, *, seed: int) -> tuple[str, ...]:
  """`k` distinct instance-level captions "a ADJ NOUN PREP the ADJ NOUN", deterministic per seed.

  Caption q of the first round takes words 2q and 2q + 1 of seeded permutations of the adjective and
  noun lists, so the first 12 captions share no adjective or noun; later ones are seeded draws of new
  combinations (all captions distinct).
  """
  if k < 0:
    raise ValueError(f"k={k} must be ≥ 0.")
  rng = np.random.default_rng([seed, 6])
  adj, noun, preps = (rng.permutation(words) for words in (_ADJECTIVES, _NOUNS, _PREPOSITIONS))
  half = len(_ADJECTIVES) // 2
  out, seen = [], set()
  for i in range(100 * (k + 10)):
    if len(out) == k:
      break
    if i < half:  # first round: words 2i and 2i + 1, disjoint across captions
      a1, a2, n1, n2 = adj[2 * i], adj[2 * i + 1], noun[2 * i], noun[2 * i + 1]
    else:  # later: seeded draws of new combinations
      (a1, a2), (n1, n2) = rng.choice(adj, 2, replace=False), rng.choice(noun, 2, replace=False)
    caption = f"{'an' if a1[0] in 'aeiou' else 'a'} {a1} {n1} {preps[i % len(preps)]} the {a2} {n2}"
    if caption not in seen:
      seen.add(caption)
      out.append(caption)
  if len(out) < k:
    raise ValueError(f"Cannot make {k} distinct instance captions from the word lists.")
  return tuple(out)


def caption_subset(subset: DuplicatedSubset, dataset: str, *, seed: int) -> DuplicatedSubset:
  """`subset` with captions in its manifest: unique ones for duplicated images, class ones else.

  Duplicated image j (in `manifest.duplicated_ids` order) gets `instance_captions(...)[j]`; every
  other image one of its class's templates, drawn with the seed.
  """
  m = subset.manifest
  unique = instance_captions(len(m.duplicated_ids), seed=seed)
  rng = np.random.default_rng([seed, 7])
  captions = []
  for u in range(len(m.label)):
    if m.is_duplicated[u]:
      captions.append(unique[int(np.searchsorted(m.duplicated_ids, u))])
    else:
      options = class_captions(dataset, int(m.label[u]))
      captions.append(options[int(rng.integers(len(options)))])
  return dataclasses.replace(subset, manifest=dataclasses.replace(m, captions=tuple(captions)))


def tokenize_training_set(subset: DuplicatedSubset, *, max_len: int, vocab_size: int
                          ) -> tuple[Tokenizer, np.ndarray]:
  """The tokenizer of the subset's captions and the token ids [N_train, max_len] of every example.

  Raises ValueError when the vocabulary outgrows the model's token embedding (`vocab_size`).
  """
  captions = subset.manifest.captions
  if captions is None:
    raise ValueError("The training subset has no captions: build it with captions.caption_subset.")
  tokenizer = Tokenizer.build(captions, max_len=max_len)
  if len(tokenizer) > vocab_size:
    raise ValueError(f"The captions have {len(tokenizer)} tokens (specials included) but the model's "
                     f"token embedding holds model.vocab_size={vocab_size}: raise it.")
  per_unique = tokenizer.encode_batch(captions)  # raises for a caption longer than max_len − 1
  return tokenizer, per_unique[subset.manifest.unique_id]
