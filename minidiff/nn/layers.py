"""Layer helpers shared by the UNet and the text encoder: host-drawn initialisers, linear and conv
layers built with them, masked multi-head attention, the sinusoidal timestep embedding, and the
fused GroupNorm and self-attention that the UNet uses with `fused_layers=True`."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def lecun_normal_host(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """LeCun truncated-normal init (flax's default for Linear/Conv), drawn with numpy from the jax key.

  Same distribution as `nnx.initializers.lecun_normal()`, but building the UNet eagerly costs
  milliseconds: with jax's initializers XLA:CPU compiled for 30–50 s. Deterministic per key.
  Under tracing (eval_shape) only the shape matters, so zeros are returned.
  """
  if isinstance(key, jax.core.Tracer):
    return jnp.zeros(shape, dtype)
  seed = np.asarray(jax.random.key_data(key), np.uint32).ravel().tolist()
  rng = np.random.default_rng(seed)
  fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
  std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # truncation to ±2σ shrinks the variance
  x = rng.standard_normal(shape)
  bad = np.abs(x) > 2.0
  while bad.any():  # resample outside ±2: a truncated normal
    x[bad] = rng.standard_normal(int(bad.sum()))
    bad = np.abs(x) > 2.0
  return jnp.asarray(x * std, dtype)


def embed_normal_host(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """N(0, 1/features) embedding init (flax's Embed default), drawn with numpy like lecun_normal_host."""
  if isinstance(key, jax.core.Tracer):
    return jnp.zeros(shape, dtype)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).ravel().tolist())
  return jnp.asarray(rng.standard_normal(shape) / math.sqrt(shape[-1]), dtype)


def linear(c_in: int, c_out: int, *, rngs: nnx.Rngs, zero: bool = False) -> nnx.Linear:
  """A Linear layer with host-drawn LeCun init, or zero-initialised (`zero`, e.g. a residual output)."""
  return nnx.Linear(c_in, c_out, kernel_init=nnx.initializers.zeros if zero else lecun_normal_host,
                    rngs=rngs)


def conv(c_in: int, c_out: int, k: int, *, rngs: nnx.Rngs, strides: int = 1,
         zero: bool = False) -> nnx.Conv:
  """A k×k Conv with host-drawn LeCun init, or zero-initialised (`zero`)."""
  return nnx.Conv(c_in, c_out, (k, k), strides=(strides, strides), rngs=rngs,
                  kernel_init=nnx.initializers.zeros if zero else lecun_normal_host)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of integer timesteps t [B] → [B, dim] (Vaswani et al.; Ho et al.)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, num_heads: int) -> jax.Array:
  """softmax(q kᵀ/√d, keys where mask is False excluded) v, with heads split off the last axis.

  Args:
    q: queries [B, T, C]; k, v: keys and values [B, S, C]; mask: [B, S] bool, True = attend.
    num_heads: C is split into this many heads.

  Returns:
    [B, T, C].
  """
  b, t, c = q.shape
  heads = lambda a: a.reshape(a.shape[0], a.shape[1], num_heads, c // num_heads)  # noqa: E731
  h = jax.nn.dot_product_attention(heads(q), heads(k), heads(v), mask=mask[:, None, None, :])
  return h.reshape(b, t, c)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, *,
               epsilon: float = 1e-6) -> jax.Array:
  """Group normalization (Wu & He 2018) of x [B, ..., C]: (x − μ)/√(σ² + ε)·γ + β per group.

  μ and σ² are taken over every axis but the batch one and over the C/num_groups channels of a
  group, in float32, in one pass (σ² = E[x²] − μ², clipped at 0, as flax's fast variance). The
  normalisation is then one multiply-add x·a + b with per-(example, channel) a = γ/√(σ² + ε) and
  b = β − μ·a, so XLA fuses it into a single elementwise pass. Equal to `nnx.GroupNorm` (tested,
  forward and gradient); the result has x's dtype.
  """
  b, c = x.shape[0], x.shape[-1]
  if c % num_groups:
    raise ValueError(f"num_groups={num_groups} does not divide the {c} channels; choose a divisor.")
  g, per = num_groups, c // num_groups
  xf = x.astype(jnp.float32)
  grouped = xf.reshape(b, -1, g, per)
  mean = jnp.mean(grouped, axis=(1, 3))  # [B, G]
  mean2 = jnp.mean(jnp.square(grouped), axis=(1, 3))
  inv = jax.lax.rsqrt(jnp.maximum(mean2 - jnp.square(mean), 0.0) + epsilon)
  a = (inv[:, :, None] * scale.astype(jnp.float32).reshape(g, per)).reshape(b, c)
  shift = bias.astype(jnp.float32) - jnp.repeat(mean, per, axis=1) * a
  bcast = (b,) + (1,) * (x.ndim - 2) + (c,)
  return (xf * a.reshape(bcast) + shift.reshape(bcast)).astype(x.dtype)


class GroupNorm(nnx.Module):
  """Drop-in for `nnx.GroupNorm(num_features, num_groups, rngs=rngs)` computed by `group_norm`.

  Same parameters (`scale` ones, `bias` zeros, float32) under the same names, so checkpoints load
  either way, and the same two draws from `rngs`, so a model built with it is initialised exactly
  as one built with flax's.
  """

  def __init__(self, num_features: int, num_groups: int = 32, *, epsilon: float = 1e-6,
               rngs: nnx.Rngs):
    if num_groups < 1 or num_features % num_groups:
      raise ValueError(f"num_groups={num_groups} does not divide num_features={num_features}; "
                       f"choose a divisor of {num_features}.")
    rngs.params(), rngs.params()  # flax's GroupNorm draws one key for scale and one for bias
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.num_groups = num_groups
    self.epsilon = epsilon

  def __call__(self, x: jax.Array) -> jax.Array:
    return group_norm(x, self.scale[...], self.bias[...], self.num_groups, epsilon=self.epsilon)


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
  """softmax(q kᵀ/√d) v over [B, T, C] with C split into `num_heads` heads of d = C/num_heads.

  Written as two einsums with the 1/√d folded into q and the softmax in float32; with one head no
  head axis is split off (no transposes). Equal to `jax.nn.dot_product_attention` on the split
  heads (tested, forward and gradient).
  """
  b, t, c = q.shape
  d = c // num_heads
  q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)
  if num_heads == 1:
    logits = jnp.einsum("btc,bsc->bts", q, k)
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bts,bsc->btc", p, v)
  heads = lambda a: a.reshape(a.shape[0], a.shape[1], num_heads, d)  # noqa: E731
  logits = jnp.einsum("btnd,bsnd->bnts", heads(q), heads(k))
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("bnts,bsnd->btnd", p, heads(v)).reshape(b, t, c)
