"""A small transformer text encoder, trained jointly with the UNet (Vaswani et al.; pre-LN as in GPT-2).

Token ids [B, L] → token features [B, L, D], the key-padding mask [B, L] (True = a real token) and a
pooled vector [B, D] (masked mean of the features). Every caption starts with the `<null>` token
(minidiff.data.tokenizer), so each row has at least one valid key and masked attention is well defined.
Padding changes nothing: pad positions are never attended to and never pooled, so a caption gives the
same features for its real tokens whatever the padded length.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from minidiff.data.tokenizer import PAD_ID
from minidiff.nn import layers


class TransformerLayer(nnx.Module):
  """x + MHA(LN(x)) with the key-padding mask, then x + MLP(LN(x)) (GELU, 4× width)."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
    self.qkv = layers.linear(dim, 3 * dim, rngs=rngs)
    self.proj = layers.linear(dim, dim, rngs=rngs)
    self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = layers.linear(dim, 4 * dim, rngs=rngs)
    self.fc2 = layers.linear(4 * dim, dim, rngs=rngs)
    self.num_heads = num_heads

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    x = x + self.proj(layers.masked_attention(q, k, v, mask, self.num_heads))
    return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class TextEncoder(nnx.Module):
  """Token + learned positional embedding, `num_layers` pre-LN transformer layers, final LayerNorm."""

  def __init__(self, vocab_size: int, max_len: int, dim: int, *, num_layers: int, num_heads: int,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"model.text_dim={dim} is not divisible by model.text_heads={num_heads}.")
    self.token_embed = nnx.Embed(vocab_size, dim, embedding_init=layers.embed_normal_host, rngs=rngs)
    self.pos_embed = nnx.Param(layers.embed_normal_host(rngs.params(), (max_len, dim)))
    self.layers = nnx.List([TransformerLayer(dim, num_heads, rngs=rngs) for _ in range(num_layers)])
    self.ln_out = nnx.LayerNorm(dim, rngs=rngs)
    self.max_len = max_len

  def __call__(self, tokens: jax.Array, *, noise: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Encodes token ids [B, L] (L ≤ max_len).

    Args:
      tokens: int ids [B, L], `<pad>` (id 0) after the caption.
      noise: optional [B, L, D] added to the output features before pooling (the Gaussian
        text-embedding perturbation of Somepalli et al. 2023, drawn by the caller).

    Returns:
      (features [B, L, D], mask [B, L] bool, pooled [B, D]).
    """
    x, mask = self.encode(tokens, noise=noise)
    return x, mask, pool(x, mask)

  def encode(self, tokens: jax.Array, *, noise: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """(features [B, L, D], mask [B, L] bool) of token ids [B, L], `noise` added; no pooling.

    The features are the continuous text embedding that the UNet also accepts directly
    (minidiff.nn.unet.TextConditioner), e.g. after an optimisation of Wen et al. 2024.
    """
    b, length = tokens.shape
    if length > self.max_len:
      raise ValueError(f"{length} tokens exceed the text encoder's max_len={self.max_len}.")
    mask = tokens != PAD_ID
    x = self.token_embed(tokens) + self.pos_embed[...][:length][None]
    for layer in self.layers:
      x = layer(x, mask)
    x = self.ln_out(x)
    if noise is not None:
      x = x + noise
    return x, mask


def pool(features: jax.Array, mask: jax.Array) -> jax.Array:
  """The masked mean [B, D] of token features [B, L, D] over the real tokens (mask [B, L])."""
  m = mask[..., None].astype(features.dtype)
  return jnp.sum(features * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)  # masked mean
