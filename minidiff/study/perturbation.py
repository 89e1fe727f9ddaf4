"""Prompt-perturbation baselines against memorization (Somepalli et al. 2023, "Understanding and
Mitigating Copying in Diffusion Models", inference-time mitigations; SCIENCE.md §3).

Each perturbation is a small frozen dataclass applied to the conditional prompt only (the null
condition stays the empty caption) and combined with a guidance strategy, e.g. `cfg+random_tokens:k=4`:
  * `embedding_noise` (λ): ε ~ N(0, λ²) added to every feature of the text encoder's output,
    drawn once per sample (Somepalli et al.'s "Gaussian noise", λ = 0.1);
  * `random_tokens` (k): k words drawn from the tokenizer's vocabulary, inserted at random positions;
  * `repeat_words` (k): k words of the prompt, drawn with replacement, inserted again at random
    positions ("caption word repetition");
  * `random_numbers` (k): k random integers in [0, 10⁶) inserted at random positions. A word-level
    tokenizer built from captions without numbers maps them to `<unk>`.
Every draw comes from an explicit seed or key: the same seed perturbs the same prompts the same way.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from minidiff.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class EmbeddingNoise:
  """Gaussian noise of standard deviation `lam` on the text embedding (the encoder's output)."""

  lam: float = 0.1

  def validate(self) -> None:
    if not (math.isfinite(self.lam) and self.lam >= 0):
      raise ValueError(f"embedding_noise: lam={self.lam} must be a finite number ≥ 0.")

  def noise(self, key: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
    """λ·z, z ~ N(0, I) of `shape` ([N, L, text_dim]), from `key`."""
    return np.asarray(self.lam * jax.random.normal(key, shape), np.float32)


@dataclasses.dataclass(frozen=True)
class _Insertion:
  """Inserts k new words at random positions of the prompt (between, before or after its words)."""

  k: int = 4

  def validate(self) -> None:
    if int(self.k) != self.k or self.k < 1:
      raise ValueError(f"{self.name}: k={self.k} must be an integer ≥ 1.")

  name = "insertion"

  def new_words(self, prompt_words: list[str], rng: np.random.Generator,
                vocabulary: Sequence[str]) -> list[str]:
    raise NotImplementedError

  def apply(self, prompt: str, rng: np.random.Generator, vocabulary: Sequence[str]) -> str:
    """The perturbed prompt: the prompt's words (tokenizer.words) with k words inserted."""
    out = tokenizer_lib.words(prompt)
    for word in self.new_words(list(out), rng, vocabulary):
      out.insert(int(rng.integers(len(out) + 1)), word)
    return " ".join(out)


@dataclasses.dataclass(frozen=True)
class RandomTokens(_Insertion):
  """k random vocabulary words (Somepalli et al.'s "random token addition")."""

  name = "random_tokens"

  def new_words(self, prompt_words, rng, vocabulary):
    if not vocabulary:
      raise ValueError("random_tokens needs a non-empty vocabulary.")
    return [str(vocabulary[int(i)]) for i in rng.integers(len(vocabulary), size=self.k)]


@dataclasses.dataclass(frozen=True)
class RepeatWords(_Insertion):
  """k words of the prompt repeated (Somepalli et al.'s "caption word repetition")."""

  name = "repeat_words"

  def new_words(self, prompt_words, rng, vocabulary):
    if not prompt_words:
      return []  # the empty caption has no word to repeat
    return [prompt_words[int(i)] for i in rng.integers(len(prompt_words), size=self.k)]


@dataclasses.dataclass(frozen=True)
class RandomNumbers(_Insertion):
  """k random integers in [0, 10⁶) (Somepalli et al.'s "random numbers addition")."""

  name = "random_numbers"

  def new_words(self, prompt_words, rng, vocabulary):
    return [str(int(n)) for n in rng.integers(1_000_000, size=self.k)]


Perturbation = EmbeddingNoise | RandomTokens | RepeatWords | RandomNumbers
PERTURBATIONS = {"embedding_noise": EmbeddingNoise, "random_tokens": RandomTokens,
                 "repeat_words": RepeatWords, "random_numbers": RandomNumbers}


def make_perturbation(spec: str) -> Perturbation:
  """Parses `name[:param=value]`, e.g. `embedding_noise:lam=0.1` or `random_tokens:k=4`.

  Raises ValueError for unknown names or parameters and for values out of range.
  """
  name, *params = spec.strip().split(":")
  if name not in PERTURBATIONS:
    raise ValueError(f"Unknown prompt perturbation {name!r}; choose one of {', '.join(PERTURBATIONS)}.")
  cls = PERTURBATIONS[name]
  fields = {f.name: f.type for f in dataclasses.fields(cls)}
  kw = {}
  for p in params:
    if "=" not in p:
      raise ValueError(f"Perturbation {spec!r}: expected param=value, got {p!r}.")
    k, v = p.split("=", 1)
    if k not in fields:
      raise ValueError(f"Perturbation {name!r} has no parameter {k!r}; it has {sorted(fields)}.")
    try:
      kw[k] = float(v) if k == "lam" else int(v)
    except ValueError as e:
      raise ValueError(f"Perturbation {spec!r}: {k}={v!r} is not a number.") from e
  perturbation = cls(**kw)
  perturbation.validate()
  return perturbation


def perturb_prompts(prompts: Sequence[str], perturbation: Perturbation | None, *, seed: int,
                    vocabulary: Sequence[str]) -> list[str]:
  """Prompt-level perturbation of every prompt (prompt i drawn from (seed, i)); identity for
  `None` and for `EmbeddingNoise`, which acts on the embedding instead."""
  if perturbation is None or isinstance(perturbation, EmbeddingNoise):
    return list(prompts)
  return [perturbation.apply(p, np.random.default_rng([seed, i]), vocabulary)
          for i, p in enumerate(prompts)]
