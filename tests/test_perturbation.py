import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.core import specs
from minidiff.data.tokenizer import Tokenizer, words
from minidiff.nn.text_encoder import TextEncoder
from minidiff.study import perturbation

PROMPTS = ["a quiet lantern beside the amber river", "a handwritten seven", ""]
VOCAB = ("amber", "digit", "falcon", "handwritten", "seven")


def _is_subsequence(short, long):
  it = iter(long)
  return all(w in it for w in short)


@pytest.mark.parametrize("spec", ["random_tokens:k=4", "repeat_words:k=3", "random_numbers:k=2"])
def test_prompt_perturbations_insert_exactly_k_words(spec):
  p = specs.make_perturbation(spec)
  out = perturbation.perturb_prompts(PROMPTS, p, seed=0, vocabulary=VOCAB)
  assert out == perturbation.perturb_prompts(PROMPTS, p, seed=0, vocabulary=VOCAB)  # seeded
  assert out != perturbation.perturb_prompts(PROMPTS, p, seed=1, vocabulary=VOCAB)
  for before, after in zip(PROMPTS, out):
    old, new = words(before), words(after)
    added = list(new)
    for w in old:  # the original words survive, in order; what is left was inserted
      added.remove(w)
    assert _is_subsequence(old, new)
    if spec.startswith("repeat_words") and not old:
      assert new == []  # nothing to repeat in the empty caption
      continue
    assert len(added) == p.k
    if spec.startswith("random_tokens"):
      assert set(added) <= set(VOCAB)
    elif spec.startswith("repeat_words"):
      assert set(added) <= set(old)
    else:
      assert all(w.isdigit() and int(w) < 1_000_000 for w in added)


def test_random_numbers_are_unknown_to_a_caption_tokenizer():
  tok = Tokenizer.build(PROMPTS, max_len=16)
  out = perturbation.perturb_prompts(["a handwritten seven"], specs.RandomNumbers(k=3), seed=0,
                                     vocabulary=tok.content_words)
  assert tok.decode(tok.encode(out[0])).count("<unk>") == 3


def test_embedding_noise_has_standard_deviation_lambda_and_acts_on_the_text_embedding():
  p = specs.make_perturbation("embedding_noise:lam=0.1")
  z = perturbation.embedding_noise(p, jax.random.key(0), (64, 16, 32))
  np.testing.assert_allclose(z.std(), 0.1, rtol=0.02)
  np.testing.assert_allclose(z.mean(), 0.0, atol=0.002)
  encoder = TextEncoder(10, 16, 32, num_layers=1, num_heads=2, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(encoder)
  encode = jax.jit(lambda p, tokens, noise: nnx.merge(graphdef, p)(tokens, noise=noise)[0])
  tokens = jnp.asarray(np.r_[2, 5, 6, np.zeros(13)][None].repeat(64, 0), jnp.int32)
  clean = encode(params, tokens, jnp.zeros_like(z))
  noisy = encode(params, tokens, jnp.asarray(z))
  np.testing.assert_allclose(noisy - clean, z, atol=1e-5)  # exactly λ·z on the encoder's output
  zero = specs.make_perturbation("embedding_noise:lam=0")
  assert perturbation.embedding_noise(zero, jax.random.key(0), (2, 3)).max() == 0


@pytest.mark.parametrize("spec, match", [
    ("gaussian", "Unknown prompt perturbation"), ("random_tokens:k=0", "k=0"),
    ("random_tokens:lam=1", "no parameter"), ("embedding_noise:lam=-1", "lam"),
    ("repeat_words:k", "param=value"), ("random_numbers:k=two", "not a number"),
])
def test_bad_perturbation_specs(spec, match):
  with pytest.raises(ValueError, match=match):
    specs.make_perturbation(spec)
