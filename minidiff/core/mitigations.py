"""Peers' inference-time mitigations of memorization: their parameters and their math.

Three published methods, each a study arm beside Jain et al.'s delayed and opposite guidance
(docs/science.md, "Peer mitigations"). Each is a guidance rule (minidiff.core.rule) registered by
its spec name (`wen:target=0.07`, `amg:threshold=0.5`, `cads:s=0.25`) and run by the one sampling
loop of minidiff.core.samplers with any stepper: Wen's optimisation is the rule's `prepare`, CADS
anneals the condition in `conditions`, AMG acts on ε̂ in `predict`.

- `EmbeddingOptimisation` (Wen et al., ICLR 2024, "Detecting, explaining, and mitigating
  memorization in diffusion models"): before sampling, the condition embedding e is moved by Adam
  on d(e) = ‖ε(x_T, t₀, e) − ε(x_T, t₀, ∅)‖₂ (the first step's d_t) until d < target, per sample;
  then ordinary CFG with w samples from the moved embedding. `optimise_embedding`.
- `ConditionAnnealing` (Sadat et al., ICLR 2024, "CADS"): at every step the conditional branch
  sees ŷ = √γ(t) y + s √(1−γ(t)) n, n ~ N(0, I) fresh per step, with γ = 0 early (strong noise)
  and γ = 1 late (none), then rescaled to y's mean and standard deviation and mixed with weight ψ.
  `cads_gamma`, `anneal_condition`, `annealed_eps_fn`.
- `AntiMemorization` (Chen et al., CVPR 2024, "Towards memorization-free diffusion models"): at
  every step, x̂₀ of the CFG prediction is compared with its nearest de-duplicated training image;
  when the similarity σ exceeds a threshold λ, despecification lowers the guidance weight and
  dissimilarity guidance adds c_sim √(1−ᾱ_t) ∇_{x_t} σ to ε̂ (pushing x̂₀ away from that image).
  It uses the training data at sampling time, which Jain et al.'s methods do not.
  `nearest_two`, `similarity`, `despecified_weight`; the rule's `predict` puts them together.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from minidiff.core import guidance, rule
from minidiff.core.schedule import NoiseSchedule

PyTree = Any
_HI = jax.lax.Precision.HIGHEST


def _finite(**values: Any) -> None:
  for name, v in values.items():
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
      raise ValueError(f"{name} must be a finite number, got {v!r}.")


def _integer(name: str, v: Any, lo: int) -> int:
  if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
      or v != int(v) or v < lo):
    raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}.")
  return int(v)


@dataclasses.dataclass(frozen=True)
class _Mitigation(guidance.Strategy):
  """What every mitigation shares: CFG with a constant w around the mitigation's own step."""

  w: float = 7.5  # the CFG weight the mitigation samples with

  def levels(self) -> tuple[float, ...]:
    """The guidance weights this mitigation can apply."""
    return (self.w,)

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    return jnp.broadcast_to(jnp.asarray(self.w, jnp.float32), d_eps.shape), state


@dataclasses.dataclass(frozen=True)
class EmbeddingOptimisation(_Mitigation):
  """Wen et al. 2024's mitigation: optimise the condition embedding, then CFG with w.

  target: stop a sample's optimisation once its first-step d = ‖ε_c − ε_u‖₂ < target.
  steps: at most this many Adam steps (Wen et al. use Adam on the text embedding).
  lr: Adam's learning rate.
  """

  name = "wen"
  family = "wen"
  help = "optimise the condition embedding until the first-step d_t < target, then CFG (Wen et al.)"
  needs_embedding: ClassVar[bool] = True

  target: float = 0.07
  steps: int = 10
  lr: float = 0.1

  def __post_init__(self):
    _finite(w=self.w, target=self.target, lr=self.lr)
    if self.target <= 0 or self.lr <= 0:
      raise ValueError(f"wen: target={self.target} and lr={self.lr} must be > 0.")
    object.__setattr__(self, "steps", _integer("wen: steps", self.steps, 0))

  def prepare(self, ctx: rule.Preparation) -> rule.Prepared:
    """The condition embedding moved by Adam on the first step's d (the null one is not)."""
    embed = _embed_fn(self, ctx)
    emb, emb_null = embed(ctx.cond), embed(ctx.null_cond)
    x = ctx.x_T
    t_first = jnp.full((x.shape[0],), int(ctx.grid[0]), jnp.int32)
    eps_u = ctx.eps_fn(x, t_first, emb_null)  # the null branch does not move with the embedding

    def d_fn(e):  # the first step's d = ‖ε_c − ε_u‖₂ at x_T, per sample
      eps_c = ctx.eps_fn(x, t_first, {**emb, "embedding": e})
      return jnp.linalg.norm((eps_c - eps_u).reshape(x.shape[0], -1), axis=1)

    opt = optimise_embedding(d_fn, emb["embedding"], target=self.target, steps=self.steps,
                             lr=self.lr)
    return rule.Prepared({**emb, "embedding": opt.embedding}, emb_null)


@dataclasses.dataclass(frozen=True)
class ConditionAnnealing(_Mitigation):
  """CADS (Sadat et al. 2024): the condition noised, annealed from strong (early) to none (late).

  With u = t/(T−1) (1 = pure noise): γ = 1 for u ≤ tau1, γ = (tau2 − u)/(tau2 − tau1) between,
  γ = 0 for u ≥ tau2. s: noise scale; psi: mixing of the rescaled embedding (1 = fully rescaled);
  rescale: 1 to rescale to y's mean and standard deviation, 0 not to. Defaults: the paper's
  τ₁ = 0.6, τ₂ = 0.9, s = 0.25, ψ = 1. s = 0 leaves the condition untouched (plain CFG).
  """

  name = "cads"
  family = "cads"
  help = "condition noised early, annealed out between tau1 and tau2, then CFG (Sadat et al.)"
  needs_embedding: ClassVar[bool] = True
  needs_row_keys: ClassVar[bool] = True  # row i's noise: fold_in(row_key_i, t), any batch split

  tau1: float = 0.6
  tau2: float = 0.9
  s: float = 0.25
  psi: float = 1.0
  rescale: int = 1

  def __post_init__(self):
    _finite(w=self.w, tau1=self.tau1, tau2=self.tau2, s=self.s, psi=self.psi)
    if not 0.0 <= self.tau1 < self.tau2 <= 1.0:
      raise ValueError(f"cads: need 0 ≤ tau1 < tau2 ≤ 1, got tau1={self.tau1}, tau2={self.tau2}.")
    if self.s < 0 or not 0.0 <= self.psi <= 1.0:
      raise ValueError(f"cads: need s ≥ 0 and psi in [0, 1], got s={self.s}, psi={self.psi}.")
    if self.rescale not in (0, 1):
      raise ValueError(f"cads: rescale must be 0 or 1, got {self.rescale!r}.")
    object.__setattr__(self, "rescale", int(self.rescale))

  def prepare(self, ctx: rule.Preparation) -> rule.Prepared:
    """The conditions as embeddings; the conditional one keeps its rows' keys for the noise."""
    embed = _embed_fn(self, ctx)
    cond = {**embed(ctx.cond["cond"]),
            "cads_key": jnp.asarray(ctx.cond["row_key"], jnp.uint32).reshape(ctx.x_T.shape[0], -1)}
    return rule.Prepared(cond, embed(ctx.null_cond["cond"]))

  def conditions(self, state, k, t, cond, null_cond, *, schedule):
    """ŷ of `anneal_condition` on the conditional branch; the null branch is left alone."""
    cond = dict(cond)
    keys = cond.pop("cads_key")
    if self.s == 0:
      return cond, null_cond
    y = cond["embedding"]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (y.shape[0],))
    draw = lambda k_, tt: jax.random.normal(  # noqa: E731
        jax.random.fold_in(jax.random.wrap_key_data(k_), tt), y.shape[1:], y.dtype)
    noise = jax.vmap(draw)(keys, t)
    gamma = cads_gamma(t, schedule.T, tau1=self.tau1, tau2=self.tau2)
    cond["embedding"] = anneal_condition(y, gamma, noise, s=self.s, psi=self.psi,
                                         rescale=bool(self.rescale), mask=cond.get("mask"))
    return cond, null_cond


@dataclasses.dataclass(frozen=True)
class AntiMemorization(_Mitigation):
  """Anti-memorization guidance (Chen et al. 2024) in pixel space, triggered per sample and step.

  σ = 1 − ‖x̂₀ − NN₁‖₂ / ‖x̂₀ − NN₂‖₂ against the de-duplicated training set (NN₁, NN₂ its nearest
  and second-nearest images): 1 for an exact copy; the study's copy test is σ > 2/3.
  threshold: λ; the guidances act on a sample at a step where σ > λ.
  c_spe: despecification, w → w − min(c_spe·(σ − λ), w − w_min) (0 = off).
  w_min: the lowest weight despecification goes to (1 = the conditional model).
  c_sim: dissimilarity guidance, ε̂ → ε̂ + c_sim √(1−ᾱ_t) ∇_{x_t} σ (0 = off), with x̂₀ that of the
    guided prediction and NN₁, NN₂ held fixed.
  through_model: 1 takes ∇_{x_t} σ through the model (exact; one backward pass per step, which
    XLA:CPU runs far slower inside the sampling scan); 0 holds ε̂ fixed, ∇_{x_t} σ = ∇_{x̂₀} σ / √ᾱ_t
    (no model call; the default).
  Chen et al.'s third guidance (the nearest neighbour's caption as a negative prompt) is left out:
  a class condition's neighbour has the same class.
  """

  name = "amg"
  family = "amg"
  help = ("where x0-hat's similarity to its nearest training image > threshold: lower w, push away "
          "(Chen et al.)")
  both_branches: ClassVar[bool] = True  # σ is read from the CFG prediction at every step
  needs_images: ClassVar[bool] = True

  threshold: float = 0.5
  c_spe: float = 20.0
  w_min: float = 1.0
  c_sim: float = 10.0
  through_model: int = 0
  # The de-duplicated training images [U, H, W, C] it searches (`with_images`); not a parameter.
  images: Any = dataclasses.field(default=None, repr=False, compare=False, kw_only=True)

  def __post_init__(self):
    _finite(w=self.w, threshold=self.threshold, c_spe=self.c_spe, w_min=self.w_min,
            c_sim=self.c_sim)
    if self.through_model not in (0, 1):
      raise ValueError(f"amg: through_model must be 0 or 1, got {self.through_model!r}.")
    object.__setattr__(self, "through_model", int(self.through_model))
    if not 0.0 <= self.threshold < 1.0:
      raise ValueError(f"amg: threshold={self.threshold} must lie in [0, 1) (σ ≤ 1).")
    if self.c_spe < 0 or self.c_sim < 0:
      raise ValueError(f"amg: c_spe={self.c_spe} and c_sim={self.c_sim} must be ≥ 0.")
    if self.w_min > self.w:
      raise ValueError(f"amg: w_min={self.w_min} must not exceed w={self.w}.")

  def levels(self) -> tuple[float, ...]:
    return (self.w, self.w_min)

  def with_images(self, images: Any) -> "AntiMemorization":
    """This rule searching `images` [U, H, W, C] (U ≥ 2), the de-duplicated training set."""
    if np.ndim(images) != 4 or np.shape(images)[0] < 2:
      raise ValueError(f"amg needs ≥ 2 training images [U, H, W, C], got shape {np.shape(images)}.")
    return dataclasses.replace(self, images=np.asarray(images, np.float32))

  def predict(self, s: rule.StepSignals, state: PyTree, *, schedule: NoiseSchedule,
              branches: rule.Branches, clip_x0: bool) -> tuple[jax.Array, jax.Array, PyTree]:
    """Steps 1–4 of Chen et al.'s guidance at one step (σ, despecification, dissimilarity)."""
    if self.images is None:
      raise ValueError("amg needs the de-duplicated training images: build it with "
                       "rule.with_images(images) (the study does this from the training data).")
    x_t, eps_c, eps_u, t = s.x_t, s.eps_c, s.eps_u, s.t
    B = x_t.shape[0]  # noqa: N806
    points = jnp.asarray(self.images, x_t.dtype).reshape(np.shape(self.images)[0], -1)
    if points.shape[1] != int(np.prod(x_t.shape[1:])):
      raise ValueError(f"amg's training images {np.shape(self.images)[1:]} do not match the samples' "
                       f"shape {x_t.shape[1:]}.")
    flat = lambda a: a.reshape(B, -1)  # noqa: E731
    ab = schedule.alpha_bar[t]

    def x0_of(x, eps):
      x0 = (x - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)  # x̂₀ = (x_t − √(1−ᾱ) ε̂)/√ᾱ
      return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0

    x0 = x0_of(x_t, guidance.guide(eps_c, eps_u, jnp.full((B,), self.w)))
    idx, _ = nearest_two(flat(x0), points)
    nn1, nn2 = points[idx[:, 0]], points[idx[:, 1]]
    sigma = similarity(flat(x0), nn1, nn2)
    triggered = sigma > self.threshold
    w = despecified_weight(self, sigma) if self.c_spe > 0 else jnp.full((B,), self.w)
    eps = guidance.guide(eps_c, eps_u, w)  # ε̂ with the despecified w
    if self.c_sim > 0 and self.through_model:
      def sigma_sum(x):  # Σ_i σ_i(x): samples are independent, so its gradient is per sample
        e_c, e_u = branches(x)
        x0_x = x0_of(x, guidance.guide(e_c, e_u, jax.lax.stop_gradient(w)))
        return jnp.sum(similarity(flat(x0_x), nn1, nn2))
      grad = jax.lax.cond(jnp.any(triggered), jax.grad(sigma_sum), jnp.zeros_like, x_t)
    elif self.c_sim > 0:  # ε̂ held fixed: ∂x̂₀/∂x_t = I/√ᾱ, so ∇_{x_t} σ = ∇_{x̂₀} σ / √ᾱ
      sigma_of = lambda x0f: jnp.sum(similarity(x0f, nn1, nn2))  # noqa: E731
      grad = jax.grad(sigma_of)(flat(x0_of(x_t, eps))).reshape(x_t.shape) / jnp.sqrt(ab)
    if self.c_sim > 0:
      push = self.c_sim * jnp.sqrt(1.0 - ab) * grad  # + c_sim √(1−ᾱ) ∇σ: x̂₀ moves down σ's slope
      eps = eps + jnp.where(triggered.reshape((B,) + (1,) * (x_t.ndim - 1)), push, 0.0)
    first = jnp.where((state.transition_step < 0) & triggered, s.k, state.transition_step)
    return eps, w, rule.GuidanceState(transition_step=first.astype(jnp.int32))


def _embed_fn(m: rule.Rule, ctx: rule.Preparation) -> Callable:
  if ctx.embed_fn is None:
    raise ValueError(f"{m.name} needs the model's condition embedding: pass embed_fn to the sampler "
                     f"(the study passes UNet.embed_condition).")
  return ctx.embed_fn


MITIGATIONS = {"wen": EmbeddingOptimisation, "amg": AntiMemorization, "cads": ConditionAnnealing}
Mitigation = EmbeddingOptimisation | AntiMemorization | ConditionAnnealing


# --- Wen et al.: embedding optimisation -----------------------------------------------------------


@struct.dataclass
class OptimisedEmbedding:
  """What `optimise_embedding` returns (B samples); a pytree, so a jitted function may return it."""

  embedding: jax.Array  # the optimised embedding, the shape of the input
  d_first: jax.Array  # [B] d before the optimisation
  d_final: jax.Array  # [B] d after it
  steps: jax.Array  # [B] int32 Adam steps each sample took


def optimise_embedding(d_fn: Callable[[jax.Array], jax.Array], embedding: jax.Array, *,
                       target: float, steps: int, lr: float) -> OptimisedEmbedding:
  """Adam on the embedding until d_fn < target per sample (Wen et al. 2024's mitigation).

  Args:
    d_fn: embedding [B, ...] → d [B], each sample's d depending on its own row only (the
      first step's ‖ε_c − ε_u‖₂ for a model without cross-sample layers).
    embedding: the starting embedding [B, ...] (the condition's own).
    target: a sample stops (is frozen) once its d < target.
    steps: at most this many Adam steps; 0 returns the embedding unchanged.
    lr: Adam's learning rate.

  Returns:
    OptimisedEmbedding; jittable. The steps are unrolled (a Python loop): XLA:CPU runs a gradient
    inside a rolled `lax.fori_loop` far slower (a training step ~30× in this project), so keep
    `steps` small.
  """
  opt = optax.adam(lr)

  def total(e):
    d = d_fn(e)
    return jnp.sum(d), d  # samples are independent: the gradient of the sum is per sample

  def d_and_grad(e):
    (_, d), g = jax.value_and_grad(total, has_aux=True)(e)
    return d, g

  def body(carry):
    e, state, taken = carry
    d, g = d_and_grad(e)
    active = d >= target  # a sample below the target is frozen from here on
    updates, state = opt.update(g, state, e)
    mask = active.reshape(active.shape + (1,) * (e.ndim - 1))
    e = jnp.where(mask, optax.apply_updates(e, updates), e)
    return e, state, taken + active.astype(jnp.int32)

  d_first = d_fn(embedding)
  taken = jnp.zeros(d_first.shape, jnp.int32)
  carry = (embedding, opt.init(embedding), taken)
  for _ in range(int(steps)):
    carry = body(carry)
  e, _, taken = carry
  return OptimisedEmbedding(e, d_first, d_fn(e) if steps else d_first, taken)


# --- CADS: condition annealing --------------------------------------------------------------------


def cads_gamma(t: jax.Array, T: int, *, tau1: float, tau2: float) -> jax.Array:  # noqa: N803
  """γ(t) ∈ [0, 1] of CADS, u = t/(T−1): 1 for u ≤ τ₁, (τ₂ − u)/(τ₂ − τ₁) between, 0 for u ≥ τ₂."""
  u = jnp.asarray(t, jnp.float32) / max(T - 1, 1)
  return jnp.clip((tau2 - u) / (tau2 - tau1), 0.0, 1.0)  # piecewise linear, Sadat et al. §3


def _stats(y: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Per-sample mean and standard deviation over every non-batch axis (real tokens only)."""
  axes = tuple(range(1, y.ndim))
  if mask is None:
    return jnp.mean(y, axis=axes, keepdims=True), jnp.std(y, axis=axes, keepdims=True)
  m = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (y.ndim - mask.ndim)), y.shape)
  m = m.astype(y.dtype)
  n = jnp.maximum(jnp.sum(m, axis=axes, keepdims=True), 1.0)
  mean = jnp.sum(y * m, axis=axes, keepdims=True) / n
  var = jnp.sum(jnp.square(y - mean) * m, axis=axes, keepdims=True) / n
  return mean, jnp.sqrt(var)


def anneal_condition(y: jax.Array, gamma: jax.Array, noise: jax.Array, *, s: float, psi: float,
                     rescale: bool, mask: jax.Array | None = None) -> jax.Array:
  """CADS's noised condition with its rescaling (Sadat et al. 2024, §3).

  ŷ = √γ y + s √(1−γ) n; rescaled: ŷ_r = (ŷ − mean ŷ)/std ŷ · std y + mean y; out = ψ ŷ_r + (1−ψ) ŷ.
  Statistics are per sample over every feature (text: real tokens only). Where γ = 1, or s = 0,
  the condition is returned unchanged (bit for bit).

  Args:
    y: the condition embedding [B, ...].
    gamma: [B] γ per sample.
    noise: n, the shape of y.
    s: noise scale; psi: ψ ∈ [0, 1]; rescale: apply the rescaling.
    mask: optional [B, L] real-token mask of a text embedding [B, L, D].
  """
  if s == 0:
    return y
  g = jnp.asarray(gamma, y.dtype).reshape((-1,) + (1,) * (y.ndim - 1))
  y_hat = jnp.sqrt(g) * y + s * jnp.sqrt(1.0 - g) * noise  # ŷ = √γ y + s √(1−γ) n
  if rescale:
    mean_y, std_y = _stats(y, mask)
    mean_h, std_h = _stats(y_hat, mask)
    y_rs = (y_hat - mean_h) / jnp.where(std_h > 0, std_h, 1.0) * std_y + mean_y
    y_hat = psi * y_rs + (1.0 - psi) * y_hat
  return jnp.where(g >= 1.0, y, y_hat)


# --- AMG: nearest training images and the similarity ---------------------------------------------


def nearest_two(x: jax.Array, points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Exact nearest and second-nearest rows of `points` [U, D] for each x [B, D].

  Returns (indices [B, 2] int32, Euclidean distances [B, 2]), nearest first.
  """
  sq = (jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * jnp.matmul(x, points.T, precision=_HI)
        + jnp.sum(points * points, axis=1)[None, :])
  neg, idx = jax.lax.top_k(-sq, 2)
  return idx.astype(jnp.int32), jnp.sqrt(jnp.maximum(-neg, 0.0))


def similarity(x0: jax.Array, nn1: jax.Array, nn2: jax.Array) -> jax.Array:
  """σ = 1 − ‖x̂₀ − NN₁‖₂ / ‖x̂₀ − NN₂‖₂ per sample (x̂₀, NN₁, NN₂ [B, D]); differentiable in x̂₀."""
  d1 = jnp.sqrt(jnp.sum(jnp.square(x0 - nn1), axis=1) + 1e-12)
  d2 = jnp.sqrt(jnp.sum(jnp.square(x0 - nn2), axis=1) + 1e-12)
  return 1.0 - d1 / d2


def despecified_weight(amg: AntiMemorization, sigma: jax.Array) -> jax.Array:
  """[B] w after despecification: w − min(c_spe (σ − λ), w − w_min) where σ > λ, else w."""
  lowered = amg.w - jnp.minimum(amg.c_spe * (sigma - amg.threshold), amg.w - amg.w_min)
  return jnp.where(sigma > amg.threshold, lowered, amg.w).astype(jnp.float32)
