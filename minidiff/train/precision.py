"""Mixed precision: parameters, optimizer state and EMA stay float32; the UNet may compute in bf16.

`config.model.compute_dtype = "bfloat16"` casts the parameters and the noisy input to bf16 inside
the jitted step (GroupNorm statistics are still reduced in float32 by flax), and the predicted noise
back to float32 before the loss, so gradients arrive in float32 for the float32 master weights.
Meant for GPUs and TPUs; on this CPU bf16 is no faster (measured, docs/performance.md).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The dtype config.model.compute_dtype names (float32 when absent); ValueError for others."""
  name = config.model.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.compute_dtype={name!r}: use one of {sorted(COMPUTE_DTYPES)}.")
  return COMPUTE_DTYPES[name]


def cast_floating(tree: Any, dtype: jnp.dtype) -> Any:
  """Every floating-point leaf of `tree` cast to `dtype` (integer leaves untouched)."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def with_compute_dtype(apply: Callable[..., jax.Array], dtype: jnp.dtype) -> Callable[..., jax.Array]:
  """Wraps `apply(params, x, *rest)` to run in `dtype` and return float32 (identity for float32)."""
  if dtype == jnp.float32:
    return apply

  def wrapped(params, x, *rest, **kw):
    out = apply(cast_floating(params, dtype), x.astype(dtype), *rest, **kw)
    return out.astype(jnp.float32)

  return wrapped
