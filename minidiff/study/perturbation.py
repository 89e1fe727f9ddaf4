"""Prompt-perturbation baselines against memorization (Somepalli et al. 2023, "Understanding and
Mitigating Copying in Diffusion Models", inference-time mitigations; docs/science.md §3).

The perturbations' parameters and their spec parsing are minidiff.core.specs' (`EmbeddingNoise`,
`RandomTokens`, ...); this module applies them. Each acts on the conditional prompt only (the null
condition stays the empty caption) and is combined with a guidance strategy, e.g.
`cfg+random_tokens:k=4`:
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

from typing import Sequence

import jax
import numpy as np

from minidiff.core import specs
from minidiff.data import tokenizer as tokenizer_lib


def embedding_noise(perturbation: specs.EmbeddingNoise, key: jax.Array, shape: tuple[int, ...]
                    ) -> np.ndarray:
  """λ·z, z ~ N(0, I) of `shape` ([N, L, text_dim]), from `key`."""
  return np.asarray(perturbation.lam * jax.random.normal(key, shape), np.float32)


def _new_words(perturbation: specs.Perturbation, prompt_words: list[str], rng: np.random.Generator,
               vocabulary: Sequence[str]) -> list[str]:
  """The k words an insertion perturbation adds to a prompt of `prompt_words`."""
  k = perturbation.k
  if isinstance(perturbation, specs.RandomTokens):
    if not vocabulary:
      raise ValueError("random_tokens needs a non-empty vocabulary.")
    return [str(vocabulary[int(i)]) for i in rng.integers(len(vocabulary), size=k)]
  if isinstance(perturbation, specs.RepeatWords):
    if not prompt_words:
      return []  # the empty caption has no word to repeat
    return [prompt_words[int(i)] for i in rng.integers(len(prompt_words), size=k)]
  if isinstance(perturbation, specs.RandomNumbers):
    return [str(int(n)) for n in rng.integers(1_000_000, size=k)]
  raise TypeError(f"{perturbation!r} is not a prompt-level perturbation.")


def perturb_prompt(prompt: str, perturbation: specs.Perturbation, rng: np.random.Generator,
                   vocabulary: Sequence[str]) -> str:
  """The perturbed prompt: the prompt's words (tokenizer.words) with k words inserted."""
  out = tokenizer_lib.words(prompt)
  for word in _new_words(perturbation, list(out), rng, vocabulary):
    out.insert(int(rng.integers(len(out) + 1)), word)
  return " ".join(out)


def perturb_prompts(prompts: Sequence[str], perturbation: specs.Perturbation | None, *, seed: int,
                    vocabulary: Sequence[str]) -> list[str]:
  """Prompt-level perturbation of every prompt (prompt i drawn from (seed, i)); identity for
  `None` and for `EmbeddingNoise`, which acts on the embedding instead."""
  if perturbation is None or isinstance(perturbation, specs.EmbeddingNoise):
    return list(prompts)
  return [perturb_prompt(p, perturbation, np.random.default_rng([seed, i]), vocabulary)
          for i, p in enumerate(prompts)]
