"""Exact minimum-MSE denoisers for densities known in closed form (docs/science.md §5).

For data x₀ ~ p and x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, the optimal ε-predictor is
ε*(x_t, t) = (x_t − √ᾱ_t E[x₀|x_t]) / √(1−ᾱ_t), so each density only has to give its posterior
mean E[x₀|x_t] and, to be a mixture component, its log marginal log p_t(x_t):

- `EmpiricalDensity`: a finite weighted training set {x_i, π_i} — the "ideal memorizer",
  E[x₀|x_t] = Σ_i softmax_i(log π_i − ‖x_t − √ᾱ x_i‖²/(2(1−ᾱ))) x_i.
- `GaussianDensity`: N(μ, Σ) with Σ = U diag(λ) Uᵀ + ρ (I − UUᵀ) (full, low-rank + isotropic, or
  Σ = 0: an atom), a generalising reference; x_t ~ N(√ᾱ μ, ᾱΣ + (1−ᾱ)I) in closed form.
- `MixtureDensity`: Σ_k π_k p_k; posterior means combined with responsibilities
  r_k ∝ π_k p_{k,t}(x_t). A memorized condition is a mixture of an atom and a generalising part.

`IdealDenoiser` maps integer condition ids to densities (plus the null condition) and is the model
`eps_apply(denoiser, x_t, t, cond)` for `samplers.make_sampler`; `make_eps_fn` closes over one for
`samplers.sample`. All densities are pytrees; images of any shape [B, ...] are flattened to [B, D].
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from minidiff.core.schedule import NoiseSchedule

_HI = jax.lax.Precision.HIGHEST


class Density(Protocol):
  """What a density gives the denoiser (all inputs flattened: x [B, D], ᾱ [B])."""

  shape: tuple[int, ...]

  def stats(self, x: jax.Array, alpha_bar: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p_t(x) [B], E[x₀|x_t = x] [B, D])."""


def _flat(x: jax.Array) -> jax.Array:
  return jnp.reshape(x, (x.shape[0], -1))


def _alpha_bar(schedule: NoiseSchedule, t: jax.Array, batch: int) -> jax.Array:
  return jnp.broadcast_to(schedule.alpha_bar[jnp.asarray(t)], (batch,)).astype(jnp.float32)


@jax.jit
def _posterior_mean(density, x_t, t, schedule):
  ab = _alpha_bar(schedule, t, x_t.shape[0])
  return density.stats(_flat(x_t), ab)[1].reshape(x_t.shape)


@jax.jit
def _log_marginal(density, x_t, t, schedule):
  return density.stats(_flat(x_t), _alpha_bar(schedule, t, x_t.shape[0]))[0]


@jax.jit
def _eps(density, x_t, t, schedule):
  ab = _alpha_bar(schedule, t, x_t.shape[0]).reshape((-1,) + (1,) * (x_t.ndim - 1))
  return (x_t - jnp.sqrt(ab) * _posterior_mean(density, x_t, t, schedule)) / jnp.sqrt(1.0 - ab)


class _Methods:
  """Public image-shaped, jitted wrappers around `stats`, shared by every density."""

  def posterior_mean(self, x_t: jax.Array, t: jax.Array, schedule: NoiseSchedule) -> jax.Array:
    """E[x₀ | x_t] [B, ...] at timestep t (scalar or [B])."""
    return _posterior_mean(self, x_t, t, schedule)

  def log_marginal(self, x_t: jax.Array, t: jax.Array, schedule: NoiseSchedule) -> jax.Array:
    """log p_t(x_t) [B], the density of x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε."""
    return _log_marginal(self, x_t, t, schedule)

  def eps(self, x_t: jax.Array, t: jax.Array, schedule: NoiseSchedule) -> jax.Array:
    """ε*(x_t, t) = (x_t − √ᾱ_t E[x₀|x_t]) / √(1−ᾱ_t)."""
    return _eps(self, x_t, t, schedule)


@struct.dataclass
class EmpiricalDensity(_Methods):
  """Σ_i π_i δ(x − x_i): the training set itself (the exact denoiser memorizes it)."""

  points: jax.Array  # [N, D] training images, flattened
  log_weights: jax.Array  # [N] log π_i, normalised
  shape: tuple[int, ...] = struct.field(pytree_node=False)

  @classmethod
  def from_images(cls, images: np.ndarray, weights: np.ndarray | None = None) -> "EmpiricalDensity":
    """From images [N, ...]; `weights` (e.g. duplication counts) default to uniform."""
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
      raise ValueError(f"weights must be {n} non-negative numbers with a positive sum.")
    with np.errstate(divide="ignore"):
      log_w = np.log(w / w.sum())
    return cls(jnp.asarray(images.reshape(n, -1)), jnp.asarray(log_w, jnp.float32),
               tuple(images.shape[1:]))

  def stats(self, x, alpha_bar):
    d = x.shape[1]
    # Centre on the data mean first: ‖x − √ᾱ x_i‖² = ‖y − √ᾱ q_i‖², y = x − √ᾱ c, q_i = x_i − c,
    # which keeps the expanded square's cancellation small when 1 − ᾱ is tiny.
    c = jnp.mean(self.points, axis=0)
    q = self.points - c
    y = x - jnp.sqrt(alpha_bar)[:, None] * c
    cross = jnp.matmul(y, q.T, precision=_HI)  # [B, N]
    sq = (jnp.sum(y * y, axis=1, keepdims=True) - 2.0 * jnp.sqrt(alpha_bar)[:, None] * cross
          + alpha_bar[:, None] * jnp.sum(q * q, axis=1)[None, :])
    var = (1.0 - alpha_bar)[:, None]
    # docs/science.md §5: logits_i = log π_i − ‖x_t − √ᾱ x_i‖² / (2(1 − ᾱ))
    logits = self.log_weights[None, :] - jnp.maximum(sq, 0.0) / (2.0 * var)
    log_p = jax.nn.logsumexp(logits, axis=1) - 0.5 * d * jnp.log(2.0 * jnp.pi * var[:, 0])
    mean = jnp.matmul(jax.nn.softmax(logits, axis=1), self.points, precision=_HI)
    return log_p, mean


@struct.dataclass
class GaussianDensity(_Methods):
  """N(μ, Σ), Σ = U diag(λ) Uᵀ + ρ (I − UUᵀ) with orthonormal U [D, r]; r = 0, ρ = 0 is an atom."""

  mean: jax.Array  # [D] μ
  basis: jax.Array  # [D, r] U, orthonormal columns
  variances: jax.Array  # [r] λ ≥ 0
  residual: jax.Array  # [] ρ ≥ 0, the variance off span(U)
  shape: tuple[int, ...] = struct.field(pytree_node=False)

  @classmethod
  def fit(cls, images: np.ndarray, *, rank: int | None = None) -> "GaussianDensity":
    """Maximum-likelihood Gaussian of images [N, ...] (float64 eigh).

    rank=None keeps the full covariance; otherwise the top `rank` eigenpairs plus an isotropic ρ
    equal to the mean of the discarded eigenvalues (the total variance is kept).
    """
    x = np.asarray(images, np.float64).reshape(images.shape[0], -1)
    mu = x.mean(0)
    lam, u = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    lam, u = np.maximum(lam[::-1], 0.0), u[:, ::-1]
    r = lam.size if rank is None else int(rank)
    rho = float(lam[r:].mean()) if r < lam.size else 0.0
    return cls(jnp.asarray(mu, jnp.float32), jnp.asarray(u[:, :r], jnp.float32),
               jnp.asarray(lam[:r], jnp.float32), jnp.asarray(rho, jnp.float32),
               tuple(np.shape(images)[1:]))

  @classmethod
  def atom(cls, image: np.ndarray) -> "GaussianDensity":
    """δ(x − image): a Gaussian with Σ = 0."""
    image = np.asarray(image, np.float32)
    return cls(jnp.asarray(image.reshape(-1)), jnp.zeros((image.size, 0), jnp.float32),
               jnp.zeros((0,), jnp.float32), jnp.zeros((), jnp.float32), tuple(image.shape))

  def covariance(self) -> jax.Array:
    """Σ [D, D] (for tests and small D)."""
    u, d = self.basis, self.mean.shape[0]
    return (u * self.variances) @ u.T + self.residual * (jnp.eye(d) - u @ u.T)

  def stats(self, x, alpha_bar):
    d, r = self.basis.shape
    ab = alpha_bar[:, None]
    diff = x - jnp.sqrt(ab) * self.mean  # x_t − √ᾱ μ
    c = jnp.matmul(diff, self.basis, precision=_HI)  # coordinates in span(U)
    s = ab * self.variances + (1.0 - ab)  # eigenvalues of Cov(x_t) = ᾱΣ + (1−ᾱ)I on span(U)
    maha = jnp.sum(c * c / s, axis=1)
    logdet = jnp.sum(jnp.log(s), axis=1)
    # E[x₀|x_t] = μ + √ᾱ Σ (ᾱΣ + (1−ᾱ)I)⁻¹ (x_t − √ᾱ μ)
    gain = jnp.matmul(c * (self.variances / s), self.basis.T, precision=_HI)
    if r < d:  # the part off span(U), with variance ρ (a full basis has none: skip its matmul)
      res = diff - jnp.matmul(c, self.basis.T, precision=_HI)
      s_res = alpha_bar * self.residual + (1.0 - alpha_bar)
      maha += jnp.sum(res * res, axis=1) / s_res
      logdet += (d - r) * jnp.log(s_res)
      gain += (self.residual / s_res)[:, None] * res
    log_p = -0.5 * (maha + logdet + d * math.log(2.0 * math.pi))
    return log_p, self.mean + jnp.sqrt(ab) * gain


@struct.dataclass
class MixtureDensity(_Methods):
  """Σ_k π_k p_k with responsibilities r_k(x_t) ∝ π_k p_{k,t}(x_t)."""

  components: tuple[Density, ...]
  log_weights: jax.Array  # [K] log π_k, normalised

  @classmethod
  def of(cls, components: Sequence[Density], weights: Sequence[float]) -> "MixtureDensity":
    """Mixture of `components` (densities of one shape) with non-negative `weights`."""
    w = np.asarray(weights, np.float64)
    if len(components) != w.size or w.size == 0 or np.any(w < 0) or w.sum() <= 0:
      raise ValueError("need one non-negative weight per component, with a positive sum.")
    if len({tuple(c.shape) for c in components}) != 1:
      raise ValueError("all mixture components must have the same image shape.")
    with np.errstate(divide="ignore"):
      return cls(tuple(components), jnp.asarray(np.log(w / w.sum()), jnp.float32))

  @property
  def shape(self) -> tuple[int, ...]:
    return self.components[0].shape

  def _logits_means(self, x, alpha_bar):
    parts = [comp.stats(x, alpha_bar) for comp in self.components]
    logits = self.log_weights[None, :] + jnp.stack([p[0] for p in parts], axis=1)  # [B, K]
    return logits, jnp.stack([p[1] for p in parts], axis=1)  # [B, K, D]

  def stats(self, x, alpha_bar):
    logits, means = self._logits_means(x, alpha_bar)
    resp = jax.nn.softmax(logits, axis=1)
    return jax.nn.logsumexp(logits, axis=1), jnp.einsum("bk,bkd->bd", resp, means, precision=_HI)

  def responsibilities(self, x_t: jax.Array, t: jax.Array, schedule: NoiseSchedule) -> jax.Array:
    """r_k(x_t) [B, K] = π_k p_{k,t}(x_t) / p_t(x_t)."""
    return _responsibilities(self, x_t, t, schedule)


@jax.jit
def _responsibilities(mixture, x_t, t, schedule):
  ab = _alpha_bar(schedule, t, x_t.shape[0])
  return jax.nn.softmax(mixture._logits_means(_flat(x_t), ab)[0], axis=1)  # noqa: SLF001


@struct.dataclass
class IdealDenoiser:
  """The exact ε* of one density per condition id, and of the null density for `null_id`."""

  densities: tuple[Density, ...]
  null: Density
  schedule: NoiseSchedule
  ids: tuple[int, ...] = struct.field(pytree_node=False)
  null_id: int = struct.field(pytree_node=False)

  @classmethod
  def build(cls, conditions: Mapping[int, Density], null: Density, schedule: NoiseSchedule, *,
            null_id: int) -> "IdealDenoiser":
    """Checks ids (distinct from `null_id`) and shapes, and orders the conditions by id."""
    ids = tuple(sorted(int(i) for i in conditions))
    if null_id in ids:
      raise ValueError(f"null_id {null_id} is also a condition id.")
    if any(tuple(conditions[i].shape) != tuple(null.shape) for i in ids):
      raise ValueError("every condition's density must have the null density's image shape.")
    return cls(tuple(conditions[i] for i in ids), null, schedule, ids, int(null_id))

  def posterior_mean(self, x_t: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
    """E[x₀ | x_t, c] [B, ...]; an id that is neither a condition nor null_id gives NaN."""
    x, b = _flat(x_t), x_t.shape[0]
    ab = _alpha_bar(self.schedule, t, b)
    cond = jnp.broadcast_to(jnp.asarray(cond), (b,))
    out = jnp.full_like(x, jnp.nan)
    for i, dens in zip(self.ids + (self.null_id,), self.densities + (self.null,)):
      use = cond == i  # each density runs on the whole batch (skipped if no sample asks for it)
      m = jax.lax.cond(jnp.any(use), lambda dens=dens: dens.stats(x, ab)[1],
                       lambda: jnp.zeros_like(x))
      out = jnp.where(use[:, None], m, out)
    return out.reshape(x_t.shape)

  def eps(self, x_t: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
    """ε*(x_t, t, c) = (x_t − √ᾱ_t E[x₀|x_t, c]) / √(1−ᾱ_t)."""
    m = self.posterior_mean(x_t, t, cond)
    ab = _alpha_bar(self.schedule, t, x_t.shape[0]).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return (x_t - jnp.sqrt(ab) * m) / jnp.sqrt(1.0 - ab)


def eps_apply(denoiser: IdealDenoiser, x_t: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
  """`samplers.make_sampler` model: the denoiser is the (traced) params, cond [B] int ids."""
  return denoiser.eps(x_t, t, cond)


def make_eps_fn(conditions: Mapping[int, Density], null: Density, schedule: NoiseSchedule, *,
                null_id: int) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """Builds a jitted `eps_fn(x_t, t, cond) -> ε*` for `samplers.sample`.

  Args:
    conditions: condition id → density (`EmpiricalDensity`, `GaussianDensity`, `MixtureDensity`).
    null: the density of the null (unconditional) condition.
    schedule: the noise schedule defining x_t.
    null_id: the int id that selects `null` in `cond` (minidiff's UNet uses num_classes).

  Returns:
    eps_fn with x_t [B, ...], t scalar or [B] int32, cond [B] int32.
  """
  denoiser = IdealDenoiser.build(conditions, null, schedule, null_id=null_id)
  return jax.jit(lambda x_t, t, cond: denoiser.eps(x_t, t, cond))
