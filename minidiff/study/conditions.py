"""Condition sets: what every sample of a study asks for, and which training image that names.

One `ConditionSet` feeds the one study engine for class- and text-conditioned models alike. Per
sample i it holds the condition the model sees (`cond`, a pytree with leading dim N: class ids, or
token ids), the class it requests (for alignment), the training image the condition names (the
duplicated image of a memorized class, or the captioned image of a memorized prompt; −1 if none),
and named groups ("memorized": conditions that name a duplicated image, "other": the rest).
Prompt perturbations are transforms of a text condition set (`perturb`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from minidiff.data import captions as captions_lib
from minidiff.data import tokenizer as tokenizer_lib
from minidiff.data.duplication import Manifest
from minidiff.core import specs
from minidiff.study import perturbation as perturbation_lib

GROUPS = ("memorized", "other")


@dataclasses.dataclass(frozen=True)
class ConditionSet:
  """The conditions of a study, one row per sample (N rows).

  Attributes:
    kind: "class" or "text".
    cond: condition pytree with leading dim N (class ids [N] int32; token ids [N, L] int32, or a
      dict with `tokens` and embedding `noise` for the embedding-noise perturbation).
    null: the null condition, same structure with leading dim 1.
    requested_class: [N] int, the class each condition asks for (−1: none).
    target_image: [N] int, unique-image id of the training image the condition names (−1: none).
    groups: name → [N] bool; always has "memorized" and "other" (disjoint).
    prompts: [N] the prompts (text sets; perturbed prompts after `perturb`).
    named_images: [N, K] every training image the condition names (−1 padded; column 0 is
      `target_image`), when some condition names several (a class with several duplicated
      images); None when each names at most one.
  """

  kind: str
  cond: Any
  null: Any
  requested_class: np.ndarray
  target_image: np.ndarray
  groups: Mapping[str, np.ndarray]
  prompts: tuple[str, ...] | None = None
  named_images: np.ndarray | None = None

  def named(self) -> np.ndarray:
    """[N, K] the training images each condition names (−1 padded; K = 1 if each names one)."""
    return self.target_image[:, None] if self.named_images is None else self.named_images

  def __len__(self) -> int:
    return int(self.requested_class.shape[0])

  def describe(self) -> dict[str, Any]:
    """JSON-ready: the kind, the group sizes and (text) the distinct prompts."""
    out = dict(kind=self.kind, n=len(self), groups={k: int(v.sum()) for k, v in self.groups.items()},
               groups_mask={k: "".join("1" if f else "0" for f in v) for k, v in self.groups.items()},
               requested_class=self.requested_class.tolist(), target_image=self.target_image.tolist())
    if self.prompts is not None:
      out["prompts"] = list(self.prompts)
    if self.named_images is not None:
      out["named_images"] = self.named_images.tolist()
    return out


def memorized_classes(manifest: Manifest) -> np.ndarray:
  """The classes that contain a duplicated image (sorted)."""
  return np.unique(manifest.label[manifest.is_duplicated])


def class_conditions(manifest: Manifest, *, num: int, num_classes: int, null_id: int,
                     classes: Sequence[int] = (), memorized_share: float = 0.5,
                     memorized: Sequence[int] | None = None) -> ConditionSet:
  """`num` class conditions: `memorized_share` of them cycle over the memorized classes, the rest
  over the other classes (or, with `classes`, cycle over those).

  The memorized classes are those with a duplicated image, or `memorized` (e.g. to study a
  control model trained without duplication on the classes memorized by the duplicated run).

  The named training image of a memorized class is its duplicated image; a class with several
  names them all (`named_images`; `target_image` is the first by id, the unit its samples are
  clustered by), and a sample is a copy if it copies any of them.
  """
  if num < 1:
    raise ValueError(f"num={num} samples: need at least 1.")
  if not 0.0 <= memorized_share <= 1.0:
    raise ValueError(f"memorized_share={memorized_share} must lie in [0, 1].")
  mem = memorized_classes(manifest) if memorized is None else np.unique(np.asarray(memorized, int))
  bad = [int(c) for c in mem if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f"--memorized_classes contains {bad}; the model has classes 0…{num_classes - 1}.")
  others = np.setdiff1d(np.arange(num_classes), mem)
  if classes:
    labels = np.asarray([classes[i % len(classes)] for i in range(num)], np.int32)
  elif len(mem) and len(others):
    n_mem = int(round(memorized_share * num))
    labels = np.concatenate([mem[np.arange(n_mem) % len(mem)],
                             others[np.arange(num - n_mem) % len(others)]]).astype(np.int32)
  else:
    labels = (np.arange(num) % num_classes).astype(np.int32)
  named_of = {int(c): np.flatnonzero(manifest.is_duplicated & (manifest.label == c)) for c in mem}
  k = max([1] + [len(v) for v in named_of.values()])
  named = np.full((num, k), -1, np.int64)
  for i, c in enumerate(labels):
    ids = named_of.get(int(c), ())
    named[i, :len(ids)] = ids
  memorized = np.isin(labels, mem)
  return ConditionSet(kind="class", cond=labels, null=np.asarray([null_id], np.int32),
                      requested_class=labels.astype(np.int64), target_image=named[:, 0].copy(),
                      groups=dict(memorized=memorized, other=~memorized),
                      named_images=named if k > 1 else None)


def default_prompts(manifest: Manifest, dataset: str, num: int) -> list[str]:
  """`num` prompts: the first half cycles over the unique captions of the duplicated images
  (memorized prompts), the second over the class captions, class by class, templates in turn."""
  if manifest.captions is None:
    raise ValueError("The run's manifest.json has no captions: is it a text run?")
  unique = [manifest.captions[u] for u in manifest.duplicated_ids]
  num_classes = int(manifest.label.max()) + 1
  per_class = [captions_lib.class_captions(dataset, c) for c in range(num_classes)]
  classes = [per_class[c][j] for j in range(len(per_class[0])) for c in range(num_classes)]
  n_mem = 0 if not unique else (num // 2 if num > 1 else num)
  return ([unique[i % len(unique)] for i in range(n_mem)] +
          [classes[i % len(classes)] for i in range(num - n_mem)])


def prompt_conditions(manifest: Manifest, tokenizer: tokenizer_lib.Tokenizer, *, dataset: str,
                      num: int, prompts: Sequence[str] = ()) -> ConditionSet:
  """Text conditions: `prompts` cycled to `num` (default: `default_prompts`).

  A prompt equal (up to case and punctuation) to a duplicated image's unique caption is memorized
  and names that image; a class caption requests its class; any other prompt is in neither group
  of the detection but still counted in "other".
  """
  if num < 1:
    raise ValueError(f"num={num} samples: need at least 1.")
  prompts = ([prompts[i % len(prompts)] for i in range(num)] if prompts
             else default_prompts(manifest, dataset, num))
  norm = lambda s: " ".join(tokenizer_lib.words(s))  # noqa: E731
  caption_of = {}
  if manifest.captions is not None:
    caption_of = {norm(manifest.captions[u]): int(u) for u in manifest.duplicated_ids}
  num_classes = int(manifest.label.max()) + 1
  class_of = {norm(c): k for k in range(num_classes) for c in captions_lib.class_captions(dataset, k)}
  target, label, is_class_prompt = [], [], []
  for p in prompts:
    u = caption_of.get(norm(p), -1)
    target.append(u)
    label.append(int(manifest.label[u]) if u >= 0 else class_of.get(norm(p), -1))
    is_class_prompt.append(u < 0 and norm(p) in class_of)
  target = np.asarray(target, np.int64)
  memorized = target >= 0
  tokens = tokenizer.encode_batch(prompts)
  return ConditionSet(kind="text", cond=tokens, null=tokenizer.null_tokens[None],
                      requested_class=np.asarray(label, np.int64), target_image=target,
                      groups=dict(memorized=memorized, other=~memorized,
                                  class_prompts=np.asarray(is_class_prompt, bool)),
                      prompts=tuple(prompts))


def perturb(conditions: ConditionSet, perturbation: specs.Perturbation | None, *,
            tokenizer: tokenizer_lib.Tokenizer, text_dim: int, seed: int) -> ConditionSet:
  """The condition set with its prompts perturbed (Somepalli et al.); groups and targets kept.

  Token perturbations rewrite the prompts; embedding noise adds Gaussian noise to the text
  embedding (the condition becomes a dict of tokens and noise). `None` returns the set unchanged.
  """
  if perturbation is None:
    return conditions
  if conditions.kind != "text":
    raise ValueError("Prompt perturbations apply to text conditions; this study is class-conditional.")
  perturbed = perturbation_lib.perturb_prompts(conditions.prompts, perturbation, seed=seed,
                                               vocabulary=tokenizer.content_words)
  tokens = tokenizer.encode_batch(perturbed)
  null = tokenizer.null_tokens[None]
  if isinstance(perturbation, specs.EmbeddingNoise):
    key = jax.random.fold_in(jax.random.key(seed), 2)
    noise = perturbation_lib.embedding_noise(perturbation, key, tokens.shape + (text_dim,))
    cond = dict(tokens=tokens, noise=noise)
    null = dict(tokens=null, noise=np.zeros((1,) + tokens.shape[1:] + (text_dim,), np.float32))
  else:
    cond = tokens
  return dataclasses.replace(conditions, cond=cond, null=null, prompts=tuple(perturbed))
