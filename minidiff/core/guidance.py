"""Classifier-free guidance (Ho & Salimans 2022) and the strategies that decide its weight w.

The guided prediction is ε̂ = ε_u + w·(ε_c − ε_u), with ε_c / ε_u the model's noise predictions
under the condition and under the null condition at the same x_t and t. A strategy is a small frozen
dataclass that chooses w per sampling step k *and per sample*: a `minidiff.core.rule.Rule` whose
`predict` is ε̂ = ε_u + w·(ε_c − ε_u) with the w of its `weight`. Every strategy works with every
sampler in `minidiff.core.samplers`.

A strategy's protocol (what its `predict` and the sampler call):
  - `needs_cond` / `needs_uncond`: which branches the model must evaluate (a skipped branch costs
    nothing; the sampler then makes one B-sized call instead of a 2B-sized one);
  - `validate(T)`: checks that need the schedule length (e.g. τ ∈ [0, T));
  - `init_state(batch)`: a pytree carried through the sampling scan; it always has a
    `transition_step` [B] int32 field (the step k at which w_post took over, −1 if never / n.a.);
  - `weight(state, k, t, d_eps, d_x0, *, schedule) -> (w [B], new_state)`: called once per step with
    d_eps = ‖ε_c − ε_u‖₂ and d_x0 = ‖x̂₀_c − x̂₀_u‖₂ [B] from the *same* forward pass, so a dynamic
    transition detected at step k applies w_post already at step k.

Each registered strategy is one class with its spec name, family and help (`minidiff.core.registry`
builds any rule by name): none, conditional, cfg, static, opposite, dynamic, dynamic_opposite,
interval, linear, cosine.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from minidiff.core import rule
from minidiff.core.rule import GuidanceState, check_finite as _check_finite, is_integer as _is_integer
from minidiff.core.schedule import NoiseSchedule

PyTree = Any
EpsFn = Callable[[jax.Array, jax.Array, PyTree], jax.Array]
MEASURES = ("eps", "x0")


def guide(eps_c: jax.Array, eps_u: jax.Array, w: jax.Array) -> jax.Array:
  """Guided prediction ε̂ = ε_u + w·(ε_c − ε_u) with a per-sample w [B].

  Ho & Salimans 2022 eq. 6 written with w = 1 + their w (w = 0 unconditional, w = 1 conditional).
  """
  w = jnp.asarray(w, eps_c.dtype)
  w = w.reshape(w.shape + (1,) * (eps_c.ndim - w.ndim))
  return eps_u + w * (eps_c - eps_u)  # ε̂ = ε_u + w (ε_c − ε_u)


def predict_branches(
    eps_fn: EpsFn,
    x_t: jax.Array,
    t: jax.Array,
    cond: PyTree,
    null_cond: PyTree,
    *,
    use_cond: bool = True,
    use_uncond: bool = True,
) -> tuple[jax.Array | None, jax.Array | None]:
  """Evaluates ε_c and/or ε_u in ONE forward pass; a branch not asked for comes back as None.

  With both branches, cond and null_cond are concatenated leaf by leaf into a 2B batch (x_t and t
  repeated) and the output is split in halves; with one branch the call is B-sized.

  Args:
    eps_fn: the denoiser `eps_fn(x_t [B,...], t [B] int32, cond) -> ε [B,...]`.
    x_t: noisy images [B, H, W, C].
    t: int32 timesteps [B].
    cond: condition pytree with leading dim B.
    null_cond: null condition, same structure as `cond`.
    use_cond: evaluate the conditional branch.
    use_uncond: evaluate the unconditional (null) branch.

  Returns:
    (ε_c, ε_u), each [B, H, W, C] or None.
  """
  if use_cond and use_uncond:
    both = jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null_cond)
    eps = eps_fn(jnp.concatenate([x_t, x_t], axis=0), jnp.concatenate([t, t], axis=0), both)
    eps_c, eps_u = jnp.split(eps, 2, axis=0)
    return eps_c, eps_u
  if use_cond:
    return eps_fn(x_t, t, cond), None
  if use_uncond:
    return None, eps_fn(x_t, t, null_cond)
  raise ValueError("predict_branches: at least one of use_cond / use_uncond must be True.")


@struct.dataclass
class DynamicState:
  """Carried state of the dynamic transition rule (all [B] unless noted)."""

  transition_step: jax.Array  # int32 k of the transition, −1 until it fires (latched after)
  window: jax.Array  # [B, smooth] last raw d values, NaN before the first steps
  d_prev2: jax.Array  # smoothed d_{k−2} (NaN before it exists)
  d_prev1: jax.Array  # smoothed d_{k−1}
  peak: jax.Array  # running max of smoothed d over steps ≤ k−1 (−inf before the first)


def _per_sample(value: jax.Array, d: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(value, jnp.float32), d.shape)


@dataclasses.dataclass(frozen=True)
class Strategy(rule.Rule, abc.ABC):
  """A rule that chooses only w: ε̂ = ε_u + w·(ε_c − ε_u) with w from `weight` (see the module doc)."""

  @abc.abstractmethod
  def levels(self) -> tuple[float, ...]:
    """The w values this strategy can apply (for a ramp: its two ends)."""

  @abc.abstractmethod
  def weight(
      self, state: PyTree, k: jax.Array, t: jax.Array, d_eps: jax.Array, d_x0: jax.Array, *,
      schedule: NoiseSchedule,
  ) -> tuple[jax.Array, PyTree]:
    """Returns (w [B] float32, new_state) for step k at timestep t (scalar on the 0…T−1 scale)."""

  def predict(self, s: rule.StepSignals, state: PyTree, *, schedule: NoiseSchedule,
              branches: rule.Branches, clip_x0: bool) -> tuple[jax.Array, jax.Array, PyTree]:
    """ε̂ = ε_u + w (ε_c − ε_u) with this step's w; a skipped branch means w is only ever 0 or 1."""
    del branches, clip_x0
    w, state = self.weight(state, s.k, s.t, s.d_eps, s.d_x0, schedule=schedule)
    if s.eps_u is None:
      return s.eps_c, w, state  # only ever w = 1
    if s.eps_c is None:
      return s.eps_u, w, state  # only ever w = 0
    return guide(s.eps_c, s.eps_u, w), w, state  # ε̂ = ε_u + w (ε_c − ε_u)


@dataclasses.dataclass(frozen=True)
class _ConstantWeight(Strategy):
  """Constant w: 0 = unconditional, 1 = conditional, > 1 = CFG, < 0 = opposite guidance."""

  w: float = 7.5

  def __post_init__(self):
    _check_finite(w=self.w)

  def levels(self) -> tuple[float, ...]:
    return (self.w,)

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    return _per_sample(self.w, d_eps), state


@dataclasses.dataclass(frozen=True)
class Unguided(_ConstantWeight):
  """w = 0: the unconditional model."""

  name = "none"
  family = "cfg"
  help = "w = 0: the unconditional model"

  w: float = dataclasses.field(default=0.0, init=False)


@dataclasses.dataclass(frozen=True)
class Conditional(_ConstantWeight):
  """w = 1: the conditional model."""

  name = "conditional"
  family = "cfg"
  help = "w = 1: the conditional model"

  w: float = dataclasses.field(default=1.0, init=False)


@dataclasses.dataclass(frozen=True)
class Constant(_ConstantWeight):
  """Constant w: 0 = unconditional ("none"), 1 = conditional, > 1 = CFG, < 0 = opposite guidance."""

  name = "cfg"
  family = "cfg"
  help = "classifier-free guidance, constant w (Ho & Salimans)"


@dataclasses.dataclass(frozen=True)
class StaticTransition(Strategy):
  """Static transition point (Jain et al. 2025): w = w_pre while t > τ, w = w_post while t ≤ τ.

  τ is on the model's 0…T−1 scale and need not lie on the sampler's grid. Delayed CFG is
  w_pre = 0; opposite guidance is w_pre = −s. transition_step = the first k with t_k ≤ τ.
  """

  name = "static"
  family = "static"
  help = "w_pre while t > tau, w_post while t <= tau (delayed CFG; Jain et al.)"

  w_pre: float = 0.0
  tau: int = 500
  w_post: float = 7.5

  def __post_init__(self):
    _check_finite(w_pre=self.w_pre, w_post=self.w_post)
    if not _is_integer(self.tau) or self.tau < 0:
      raise ValueError(f"tau must be an integer timestep ≥ 0, got {self.tau!r}.")
    object.__setattr__(self, "tau", int(self.tau))

  def levels(self) -> tuple[float, ...]:
    return (self.w_pre, self.w_post)

  def validate(self, T: int) -> None:  # noqa: N803
    if not 0 <= self.tau < T:
      raise ValueError(f"tau must lie in [0, T) = [0, {T}), got {self.tau}.")

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    after = jnp.asarray(t) <= self.tau  # STP: guidance switches once t ≤ τ
    fired = (state.transition_step < 0) & after
    ts = jnp.where(fired, jnp.asarray(k, jnp.int32), state.transition_step)
    w = jnp.where(after, self.w_post, self.w_pre)
    return _per_sample(w, d_eps), GuidanceState(transition_step=ts)


@dataclasses.dataclass(frozen=True)
class OppositeGuidance(StaticTransition):
  """Static transition with w_pre = −s: opposite guidance before τ (Jain et al. 2025)."""

  name = "opposite"
  family = "opposite"
  help = "static with w_pre = -s: opposite guidance before tau (Jain et al.)"

  w_pre: float = dataclasses.field(default=-2.0, init=False)
  tau: int = 650
  s: float = 2.0

  def __post_init__(self):
    object.__setattr__(self, "w_pre", -_opposite_scale(self.name, self.s))
    super().__post_init__()


def _opposite_scale(name: str, s: Any) -> float:
  if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 or s == float("inf"):
    raise ValueError(f"Strategy {name!r}: opposite-guidance scale s must be > 0, got {s!r}.")
  return float(s)


@dataclasses.dataclass(frozen=True)
class DynamicTransition(Strategy):
  """Dynamic transition point (Jain et al. 2025), per sample, online, latched.

  With d_k the per-sample distance at step k (measure "eps": ‖ε_c − ε_u‖₂, the paper; "x0":
  ‖x̂₀_c − x̂₀_u‖₂, docs/science.md §6), the rule fires at the first k ≥ 2 with d_{k−2} > d_{k−1}
  and d_k > d_{k−1} (a strict local minimum at k−1; equal values never count). Since d_k comes from
  the same forward pass, w_post applies from step k itself; before it w = w_pre. If no minimum
  occurs, guidance never switches.

  w_pre defaults to 1 as in the authors' dynamic script (their static script uses 0).
  Guards (docs/science.md §7; the defaults reproduce the authors' exact rule):
    min_step: earliest step index k at which the rule may fire (≥ 2).
    peak_fraction: a minimum counts only if d_{k−1} ≤ peak_fraction · max_{j≤k−1} d_j, i.e. d
      has really fallen from its running peak, not wiggled; 1.0 = no guard.
    smooth: the rule runs on the trailing mean of the last `smooth` d values (fewer at the start);
      1 = raw d.
  """

  name = "dynamic"
  family = "dynamic"
  help = "per sample: w_post from the first local minimum of d_t (Jain et al.)"

  w_pre: float = 1.0
  w_post: float = 7.5
  measure: str = "eps"
  min_step: int = 2
  peak_fraction: float = 1.0
  smooth: int = 1

  def __post_init__(self):
    _check_finite(w_pre=self.w_pre, w_post=self.w_post)
    if self.measure not in MEASURES:
      raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}.")
    if not _is_integer(self.min_step) or self.min_step < 2:
      raise ValueError(
          f"min_step must be an integer ≥ 2 (the rule needs 3 points), got {self.min_step!r}.")
    if not _is_integer(self.smooth) or self.smooth < 1:
      raise ValueError(f"smooth must be an integer window ≥ 1, got {self.smooth!r}.")
    _check_finite(peak_fraction=self.peak_fraction)
    if not 0.0 < self.peak_fraction <= 1.0:
      raise ValueError(f"peak_fraction must lie in (0, 1], got {self.peak_fraction!r}.")
    object.__setattr__(self, "min_step", int(self.min_step))
    object.__setattr__(self, "smooth", int(self.smooth))

  def levels(self) -> tuple[float, ...]:
    return (self.w_pre, self.w_post)

  both_branches: ClassVar[bool] = True  # d needs both branches at every step

  def init_state(self, batch: int) -> DynamicState:
    nan = jnp.full((batch,), jnp.nan, jnp.float32)
    return DynamicState(
        transition_step=jnp.full((batch,), -1, jnp.int32),
        window=jnp.full((batch, int(self.smooth)), jnp.nan, jnp.float32),
        d_prev2=nan, d_prev1=nan, peak=jnp.full((batch,), -jnp.inf, jnp.float32))

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    d = (d_eps if self.measure == "eps" else d_x0).astype(jnp.float32)
    window = jnp.concatenate([state.window[:, 1:], d[:, None]], axis=1)
    d_k = jnp.nanmean(window, axis=1)  # trailing mean over the last ≤ smooth steps
    d_km1, d_km2 = state.d_prev1, state.d_prev2
    # DTP: strict local minimum at k−1: d_{k−2} > d_{k−1} < d_k (NaN before k = 2 compares False)
    is_min = (k >= self.min_step) & (d_km2 > d_km1) & (d_k > d_km1)
    is_min &= d_km1 <= self.peak_fraction * state.peak  # guard: a real fall from the running peak
    fired = (state.transition_step < 0) & is_min
    ts = jnp.where(fired, jnp.asarray(k, jnp.int32), state.transition_step)  # latched once ≥ 0
    w = jnp.where(ts >= 0, self.w_post, self.w_pre)
    new = DynamicState(transition_step=ts, window=window, d_prev2=d_km1, d_prev1=d_k,
                       peak=jnp.fmax(state.peak, d_k))
    return _per_sample(w, d_eps), new


@dataclasses.dataclass(frozen=True)
class DynamicOpposite(DynamicTransition):
  """The dynamic transition with w_pre = −s (Jain et al. 2025's dynamic opposite guidance)."""

  name = "dynamic_opposite"
  family = "dynamic_opposite"
  help = "dynamic with w_pre = -s"

  w_pre: float = dataclasses.field(default=-7.5, init=False)
  s: float = 7.5

  def __post_init__(self):
    object.__setattr__(self, "w_pre", -_opposite_scale(self.name, self.s))
    super().__post_init__()


@dataclasses.dataclass(frozen=True)
class GuidanceInterval(Strategy):
  """Guidance interval (Kynkäänniemi et al. 2024): w inside σ_t ∈ (σ_lo, σ_hi], 1 outside.

  σ_t = √((1−ᾱ_t)/ᾱ_t); the default interval is their ImageNet-512 choice.
  """

  name = "interval"
  family = "interval"
  help = "w inside sigma_t in (sigma_lo, sigma_hi], 1 outside (Kynkaanniemi et al.)"

  w: float = 7.5
  sigma_lo: float = 0.28
  sigma_hi: float = 1.61

  def __post_init__(self):
    _check_finite(w=self.w, sigma_lo=self.sigma_lo, sigma_hi=self.sigma_hi)
    if not 0.0 <= self.sigma_lo < self.sigma_hi:
      raise ValueError(f"need 0 ≤ sigma_lo < sigma_hi, got ({self.sigma_lo}, {self.sigma_hi}].")

  def levels(self) -> tuple[float, ...]:
    return (self.w, 1.0)

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    sigma = schedule.sigma(t)  # σ_t = √((1−ᾱ_t)/ᾱ_t)
    inside = (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)  # CFG only for σ ∈ (σ_lo, σ_hi]
    return _per_sample(jnp.where(inside, self.w, 1.0), d_eps), state


@dataclasses.dataclass(frozen=True)
class IncreasingSchedule(Strategy):
  """Increasing guidance (Wang et al. 2024): w rises from w_min at t = T−1 to w_max at t = 0.

  With u = 1 − t/(T−1): shape "linear" gives w = w_min + (w_max − w_min)·u, "cosine" gives
  w = w_min + (w_max − w_min)·(1 − cos πu)/2. The defaults (0 → 15) average w = 7.5 over t:
  Wang et al.'s matched-mean counterpart of a constant w = 7.5.
  """

  w_min: float = 0.0
  w_max: float = 15.0
  shape: str = "linear"

  def __post_init__(self):
    _check_finite(w_min=self.w_min, w_max=self.w_max)
    if self.shape not in ("linear", "cosine"):
      raise ValueError(f"shape must be 'linear' or 'cosine', got {self.shape!r}.")

  def levels(self) -> tuple[float, ...]:
    return (self.w_min, self.w_max)

  def validate(self, T: int) -> None:  # noqa: N803
    if T < 2:
      raise ValueError(f"an increasing schedule needs T ≥ 2, got {T}.")

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    u = 1.0 - jnp.asarray(t, jnp.float32) / (schedule.T - 1)  # 0 at t = T−1, 1 at t = 0
    if self.shape == "cosine":
      u = 0.5 * (1.0 - jnp.cos(jnp.pi * u))  # Wang et al.: w ∝ cos(πt/T) + 1
    w = self.w_min + (self.w_max - self.w_min) * u
    return _per_sample(w, d_eps), state


@dataclasses.dataclass(frozen=True)
class LinearRamp(IncreasingSchedule):
  """Wang et al.'s linear increasing schedule."""

  name = "linear"
  family = "ramp"
  help = "w rises linearly from w_min (t = T-1) to w_max (t = 0) (Wang et al.)"

  shape: str = dataclasses.field(default="linear", init=False)


@dataclasses.dataclass(frozen=True)
class CosineRamp(IncreasingSchedule):
  """Wang et al.'s cosine increasing schedule."""

  name = "cosine"
  family = "ramp"
  help = "w rises on a cosine from w_min to w_max (Wang et al.)"

  shape: str = dataclasses.field(default="cosine", init=False)
