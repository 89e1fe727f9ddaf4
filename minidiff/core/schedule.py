"""DDPM noise schedules (Ho et al. 2020; Nichol & Dhariwal 2021) on the time scale t = 0 … T−1.

t = T−1 is (nearly) pure noise; x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε  (Ho et al. eq. 4).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def _expand(a: jax.Array, x: jax.Array) -> jax.Array:
  """Broadcasts a per-sample vector `a` [B] against `x` [B, ...]."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


@struct.dataclass
class NoiseSchedule:
  """ᾱ_t and friends for a discrete DDPM schedule. A pytree: pass it into jitted code."""

  betas: jax.Array  # [T] β_t
  alpha_bar: jax.Array  # [T] ᾱ_t = Π_{s≤t} (1 − β_s)

  @property
  def T(self) -> int:  # noqa: N802 (the paper's name)
    return self.betas.shape[0]

  def sigma(self, t: jax.Array) -> jax.Array:
    """EDM-style noise level σ_t = √((1−ᾱ_t)/ᾱ_t) (used by the guidance interval)."""
    ab = self.alpha_bar[t]
    return jnp.sqrt((1.0 - ab) / ab)

  def q_sample(self, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε  (Ho et al. eq. 4)."""
    ab = _expand(self.alpha_bar[t], x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps

  def eps_to_x0(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
    ab = _expand(self.alpha_bar[t], x_t)
    return (x_t - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)

  def x0_to_eps(self, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """ε = (x_t − √ᾱ_t x₀) / √(1−ᾱ_t)."""
    ab = _expand(self.alpha_bar[t], x_t)
    return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:  # noqa: N803
  """Ho et al.'s linear β schedule, scaled as in their paper for T = 1000."""
  betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
  alpha_bar = np.cumprod(1.0 - betas)
  return NoiseSchedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alpha_bar, jnp.float32))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:  # noqa: N803
  """Nichol & Dhariwal's cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2)."""
  f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
  betas = np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=np.float64)
  alpha_bar = np.cumprod(1.0 - betas)
  return NoiseSchedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alpha_bar, jnp.float32))


def make_schedule(name: str, T: int = 1000) -> NoiseSchedule:  # noqa: N803
  """Builds a schedule by name ("linear" or "cosine")."""
  if name == "linear":
    return linear_schedule(T)
  if name == "cosine":
    return cosine_schedule(T)
  raise ValueError(f"Unknown noise schedule {name!r}: use 'linear' or 'cosine'.")
