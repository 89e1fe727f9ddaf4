"""Layer helpers shared by the UNet and the text encoder: host-drawn initialisers, linear and conv
layers built with them, masked multi-head attention and the sinusoidal timestep embedding."""
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
