"""Deliberately duplicated training subsets and their manifest (Somepalli et al. 2023; Gu et al.).

From a source dataset pick `n_unique_per_class` unique images per class (seeded); choose which of
them are duplicated and how often; repeat those. The manifest records, for every training example,
its unique-image id, source index, class and whether it is duplicated — the metrics need the
de-duplicated set (`unique_images`) and the duplicated ids.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from minidiff.data.datasets import Dataset


@dataclasses.dataclass(frozen=True)
class DuplicationSpec:
  """How to build the subset.

  Either `num_duplicated_per_class` images per class in `duplicated_classes` (default: all classes)
  are repeated `dup_factor` times, or — when `dup_fraction` > 0 — that fraction of all unique images
  (rounded, chosen across classes) is repeated `dup_factor` times (Somepalli et al.: 5% × 5).
  """

  n_unique_per_class: int
  num_duplicated_per_class: int = 0
  dup_factor: int = 1
  dup_fraction: float = 0.0
  duplicated_classes: tuple[int, ...] | None = None
  seed: int = 0
  n_unique_per_duplicated_class: int = 0  # 0: n_unique_per_class; fewer makes the duplicate a larger share of its class

  def validate(self, num_classes: int) -> None:
    """Raises ValueError for settings that make no sense."""
    if self.n_unique_per_class < 1:
      raise ValueError(f"n_unique_per_class={self.n_unique_per_class} must be ≥ 1.")
    if self.dup_factor < 1:
      raise ValueError(f"dup_factor={self.dup_factor} must be ≥ 1 (1 = no duplication).")
    if self.num_duplicated_per_class < 0 or self.num_duplicated_per_class > self.n_unique_per_class:
      raise ValueError(f"num_duplicated_per_class={self.num_duplicated_per_class} must lie in "
                       f"[0, n_unique_per_class={self.n_unique_per_class}].")
    if self.n_unique_per_duplicated_class < 0 or (
        0 < self.n_unique_per_duplicated_class < self.num_duplicated_per_class):
      raise ValueError(f"n_unique_per_duplicated_class={self.n_unique_per_duplicated_class} must be 0 "
                       f"(same as n_unique_per_class) or ≥ num_duplicated_per_class="
                       f"{self.num_duplicated_per_class}.")
    if not 0.0 <= self.dup_fraction <= 1.0:
      raise ValueError(f"dup_fraction={self.dup_fraction} must lie in [0, 1].")
    if self.dup_fraction > 0 and self.num_duplicated_per_class > 0:
      raise ValueError("Give either dup_fraction or num_duplicated_per_class, not both.")
    if (self.dup_fraction > 0 or self.num_duplicated_per_class > 0) and self.dup_factor == 1:
      raise ValueError("Duplicated images need dup_factor ≥ 2; dup_factor=1 duplicates nothing.")
    n_unique = self.n_unique_per_class * num_classes
    if self.dup_fraction > 0 and round(self.dup_fraction * n_unique) == 0:
      raise ValueError(f"dup_fraction={self.dup_fraction} of {n_unique} unique images rounds to no "
                       f"duplicated image; use dup_fraction ≥ {1 / n_unique:.3g}.")
    bad = [c for c in (self.duplicated_classes or ()) if not 0 <= c < num_classes]
    if bad:
      raise ValueError(f"duplicated_classes contains {bad}, outside 0…{num_classes - 1}.")


@dataclasses.dataclass(frozen=True)
class Manifest:
  """Per training example (length N_train) and per unique image (length N_unique)."""

  unique_id: np.ndarray  # [N_train] index into the unique table
  source_index: np.ndarray  # [N_unique] index into the source dataset
  label: np.ndarray  # [N_unique] class
  is_duplicated: np.ndarray  # [N_unique] bool
  copies: np.ndarray  # [N_unique] how many times the image occurs in the training set
  source_name: str
  captions: tuple[str, ...] | None = None  # [N_unique] text captions (minidiff.data.captions), if any

  @property
  def duplicated_ids(self) -> np.ndarray:
    return np.flatnonzero(self.is_duplicated)

  def to_json(self) -> dict:
    examples = [dict(unique_id=int(u), source_index=int(self.source_index[u]), label=int(self.label[u]),
                     is_duplicated=bool(self.is_duplicated[u])) for u in self.unique_id]
    out = dict(source=self.source_name, num_examples=len(self.unique_id),
               num_unique=len(self.source_index), duplicated_ids=self.duplicated_ids.tolist(),
               copies=self.copies.tolist(), examples=examples)
    if self.captions is not None:
      out["captions"] = list(self.captions)
    return out

  @classmethod
  def from_json(cls, d: dict) -> "Manifest":
    ex = d["examples"]
    n = d["num_unique"]
    source_index, label, dup = np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, bool)
    for e in ex:
      source_index[e["unique_id"]] = e["source_index"]
      label[e["unique_id"]] = e["label"]
      dup[e["unique_id"]] = e["is_duplicated"]
    return cls(np.asarray([e["unique_id"] for e in ex], np.int64), source_index, label, dup,
               np.asarray(d["copies"], np.int64), d["source"],
               tuple(d["captions"]) if "captions" in d else None)

  def save(self, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.to_json(), f)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Manifest":
    with open(path) as f:
      return cls.from_json(json.load(f))


@dataclasses.dataclass(frozen=True)
class DuplicatedSubset:
  train: Dataset  # the training set, duplicates included, in a seeded shuffled order
  unique_images: np.ndarray  # [N_unique, H, W, C] the de-duplicated set
  manifest: Manifest


def build_duplicated_subset(source: Dataset, spec: DuplicationSpec) -> DuplicatedSubset:
  """Picks unique images per class and repeats the chosen ones (deterministic per `spec.seed`)."""
  spec.validate(source.num_classes)
  rng = np.random.default_rng(spec.seed)
  source_index, labels, dup = [], [], []
  dup_classes = set(range(source.num_classes) if spec.duplicated_classes is None
                    else spec.duplicated_classes)
  for c in range(source.num_classes):
    members = np.flatnonzero(source.labels == c)
    n_c = spec.n_unique_per_class
    if c in dup_classes and spec.n_unique_per_duplicated_class > 0:
      n_c = spec.n_unique_per_duplicated_class
    if len(members) < n_c:
      raise ValueError(f"Class {c} of {source.name} has {len(members)} images; "
                       f"n_unique_per_class={n_c} is too many.")
    chosen = rng.choice(members, n_c, replace=False)
    flags = np.zeros(n_c, bool)
    if c in dup_classes:
      flags[: spec.num_duplicated_per_class] = True  # `chosen` is already a random order
    source_index.append(chosen)
    labels.append(np.full(n_c, c, np.int32))
    dup.append(flags)
  source_index, labels, dup = map(np.concatenate, (source_index, labels, dup))
  if spec.dup_fraction > 0:
    k = int(round(spec.dup_fraction * len(source_index)))
    dup[:] = False
    dup[rng.choice(len(source_index), k, replace=False)] = True
  copies = np.where(dup, spec.dup_factor, 1)
  unique_id = rng.permutation(np.repeat(np.arange(len(source_index)), copies))
  manifest = Manifest(unique_id, source_index, labels, dup, copies, source.name)
  unique_images = source.images[source_index]
  train = Dataset(unique_images[unique_id], labels[unique_id], source.name + "_dup", source.num_classes)
  return DuplicatedSubset(train, unique_images, manifest)
