"""Transition detectors: rules that decide, per sample, the step k̂ at which guidance switches on.

A detector reads a per-sample sequence recorded along the sampling trajectory — d_k = ‖ε_c − ε_u‖₂
("eps") or ‖x̂₀_c − x̂₀_u‖₂ ("x0") at step k, or the authors' cosine distance between consecutive
iterates — and returns the first step at which it fires (−1: never). Online rules are guidance
strategies (`weight` sees d_k of the current step's forward pass, so w_post applies from k̂ on,
latched); `fire_steps` runs any of them over a recorded sequence, so a rule can be scored offline
on the d of a trajectory sampled once (the trajectory under w_pre is the same until it fires).

Rules:
  - the authors' local-minimum rule and its guarded variants: `guidance.DynamicTransition`
    (reused here, not copied);
  - `PeakDrop` (new): fires once d has fallen to a fraction of its running peak;
  - `PeakPassed` (new): fires once d has not exceeded its running peak for `lag` steps;
  - `TwoPass` (`two_pass`): the authors' two-pass opposite-guidance rule: a first pass under
    w = −s records the cosine distance 1 − cos(x_k, x_{k+1}); `two_pass_transition` of it is each
    sample's switch step for the second pass (the rule's `prepare` runs the first pass);
  - `StepSwitch`: the strategy that switches each sample at a given step (the second pass, or an
    oracle that switches at the true transition k*).

The spec names `peak_drop[:fraction=…:measure=…:min_step=…]`, `peak_passed[:lag=…:measure=…]`
(each with w_pre and w_post: dynamic-CFG arms like `dynamic`) and `two_pass[:s=…:w_post=…]` are
registered by their classes (minidiff.core.registry).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from minidiff.core import guidance, rule
from minidiff.core.schedule import NoiseSchedule

PyTree = Any


def _check_rule(name: str, *, w_pre: float, w_post: float, measure: str, min_step: int) -> None:
  for field, v in (("w_pre", w_pre), ("w_post", w_post)):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
      raise ValueError(f"{name}: {field} must be a finite number, got {v!r}.")
  if measure not in guidance.MEASURES:
    raise ValueError(f"{name}: measure must be one of {guidance.MEASURES}, got {measure!r}.")
  if isinstance(min_step, bool) or not isinstance(min_step, numbers.Integral) or min_step < 0:
    raise ValueError(f"{name}: min_step must be an integer ≥ 0, got {min_step!r}.")


@struct.dataclass
class PeakState:
  """Carried state of the running-peak rules (all [B])."""

  transition_step: jax.Array  # int32 k̂, −1 until the rule fires (latched after)
  peak: jax.Array  # running max of d over steps ≤ k−1 (−inf before the first step)
  since_peak: jax.Array  # int32 steps since the running peak was last raised


def _peak_init(batch: int) -> PeakState:
  return PeakState(transition_step=jnp.full((batch,), -1, jnp.int32),
                   peak=jnp.full((batch,), -jnp.inf, jnp.float32),
                   since_peak=jnp.zeros((batch,), jnp.int32))


def _latch(state: PeakState, k: jax.Array, fires: jax.Array, d: jax.Array, w_pre: float,
           w_post: float) -> tuple[jax.Array, PeakState]:
  ts = jnp.where((state.transition_step < 0) & fires, jnp.asarray(k, jnp.int32),
                 state.transition_step)
  raised = d > state.peak
  new = PeakState(transition_step=ts, peak=jnp.fmax(state.peak, d),
                  since_peak=jnp.where(raised, 0, state.since_peak + 1))
  return jnp.where(ts >= 0, w_post, w_pre).astype(jnp.float32), new


class _PeakRule(guidance.Strategy):
  """What the running-peak rules share: w_pre until they fire, w_post after, read from d."""

  both_branches: ClassVar[bool] = True  # d needs both branches at every step

  def levels(self) -> tuple[float, ...]:
    return (self.w_pre, self.w_post)  # the subclasses' fields

  def init_state(self, batch: int) -> PeakState:
    return _peak_init(batch)


@dataclasses.dataclass(frozen=True)
class PeakDrop(_PeakRule):
  """Fires at the first k ≥ min_step with d_k ≤ fraction · max_{j<k} d_j (latched).

  Why: the basin picture is a d that is high while the trajectory is inside the basin and falls
  when it leaves (on exact denoisers the memorized condition's d_x0 falls to ~0.4 of its peak,
  a control's to ~0.85; docs/theory.md). The authors' local-minimum rule needs d to rise again
  after the fall, which a trajectory under w_pre ≥ 0 does not give, and it fires on the small
  wiggles of the first steps; a threshold relative to the running peak needs neither.
  """

  name = "peak_drop"
  family = "dynamic"
  help = "per sample: w_post once d falls to `fraction` of its running peak"

  w_pre: float = 0.0
  w_post: float = 7.5
  measure: str = "x0"
  fraction: float = 0.5
  min_step: int = 2

  def __post_init__(self):
    _check_rule("PeakDrop", w_pre=self.w_pre, w_post=self.w_post, measure=self.measure,
                min_step=self.min_step)
    if not (isinstance(self.fraction, numbers.Real) and 0.0 < self.fraction < 1.0):
      raise ValueError(f"PeakDrop: fraction must lie in (0, 1), got {self.fraction!r}.")

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    d = (d_eps if self.measure == "eps" else d_x0).astype(jnp.float32)
    fires = (k >= self.min_step) & (d <= self.fraction * state.peak)  # d_k ≤ f · max_{j<k} d_j
    return _latch(state, k, fires, d, self.w_pre, self.w_post)


@dataclasses.dataclass(frozen=True)
class PeakPassed(_PeakRule):
  """Fires at the first k ≥ min_step at which d has not exceeded its running peak for `lag`
  consecutive steps (the peak is `lag` steps old): a change point from rising to not rising.

  Why: on trained pixel-space models ε-space d rises for most of the trajectory, and samples that
  end as copies reach a peak and fall (docs/science.md §7) — the turn of the trend, not a local
  wiggle, is what marks leaving the basin. `lag` steps of no new peak make the rule insensitive
  to single-step noise, at the price of firing `lag` steps after the turn.
  """

  name = "peak_passed"
  family = "dynamic"
  help = "per sample: w_post once d has set no new peak for `lag` steps"

  w_pre: float = 0.0
  w_post: float = 7.5
  measure: str = "eps"
  lag: int = 3
  min_step: int = 2

  def __post_init__(self):
    _check_rule("PeakPassed", w_pre=self.w_pre, w_post=self.w_post, measure=self.measure,
                min_step=self.min_step)
    if isinstance(self.lag, bool) or not isinstance(self.lag, numbers.Integral) or self.lag < 1:
      raise ValueError(f"PeakPassed: lag must be an integer ≥ 1, got {self.lag!r}.")

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    d = (d_eps if self.measure == "eps" else d_x0).astype(jnp.float32)
    since = jnp.where(d > state.peak, 0, state.since_peak + 1)  # steps since the peak, at k
    fires = (k >= self.min_step) & (since >= self.lag)
    return _latch(state, k, fires, d, self.w_pre, self.w_post)


@dataclasses.dataclass(frozen=True, eq=False)
class StepSwitch(guidance.Strategy):
  """w = w_pre for k < steps[b], w_post from steps[b] on, per sample b (steps ≥ S: never).

  The second pass of the authors' two-pass rule, and the oracle that switches every sample at its
  own true transition. `steps` is an int32 [B] array (traced values are fine).
  """

  w_pre: float
  w_post: float
  steps: jax.Array

  def levels(self) -> tuple[float, ...]:
    return (self.w_pre, self.w_post)

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    steps = jnp.asarray(self.steps, jnp.int32)
    after = jnp.asarray(k, jnp.int32) >= steps
    ts = jnp.where((state.transition_step < 0) & after, jnp.asarray(k, jnp.int32),
                   state.transition_step)
    w = jnp.where(after, self.w_post, self.w_pre).astype(jnp.float32)
    return jnp.broadcast_to(w, d_eps.shape), rule.GuidanceState(transition_step=ts)


@struct.dataclass
class CosineTrace:
  """State of a constant-w pass that records the authors' cosine distance at every step."""

  transition_step: jax.Array  # [B] int32, always −1 (a constant w never switches)
  cos_dist: jax.Array  # [S, B] 1 − cos(x_k, x_{k+1}) of step k (0 before it is taken)


@dataclasses.dataclass(frozen=True)
class _CosineRecorder(guidance.Constant):
  """Constant w that records 1 − cos(x_k, x_{k+1}) per step: the two-pass rule's first pass."""

  num_steps: int = 1

  def init_state(self, batch: int) -> CosineTrace:
    return CosineTrace(transition_step=jnp.full((batch,), -1, jnp.int32),
                       cos_dist=jnp.zeros((self.num_steps, batch), jnp.float32))

  def after_step(self, state, k, x_t, x_prev):
    return state.replace(cos_dist=state.cos_dist.at[k].set(cosine_distance(x_t, x_prev)))


@struct.dataclass
class TwoPassState:
  """State of the two-pass rule's second pass (all [B] unless noted)."""

  transition_step: jax.Array  # int32 step from which w_post applies (latched)
  steps: jax.Array  # int32 the switch step found by the first pass
  cos_dist: jax.Array  # [S, B] the first pass's cosine distances


@dataclasses.dataclass(frozen=True)
class TwoPass(guidance.Strategy):
  """The authors' released rule for opposite guidance + dynamic transition, both passes, per sample.

  Pass 1 (in `prepare`) samples from x_T with opposite guidance w = −s throughout and records, per
  sample, the cosine distance 1 − cos(x_k, x_{k+1}) between consecutive iterates; the transition
  is `two_pass_transition` of it (the first local minimum; the second if the first is at index 1;
  `fallback_step` if none). Pass 2 (the loop) restarts from the same x_T with the same keys and
  uses −s before the transition and w_post from it on. Costs two full sampling passes.
  """

  name = "two_pass"
  family = "dynamic_opposite"
  help = "opposite guidance, then w_post from the minimum of a first pass's cos distance " \
         "(Jain et al.)"

  s: float = 7.5
  w_post: float = 7.5
  fallback_step: int = 5

  def __post_init__(self):
    if isinstance(self.s, bool) or not isinstance(self.s, (int, float)) or not (
        math.isfinite(self.s) and self.s > 0):
      raise ValueError(f"two_pass: the opposite-guidance scale s must be a number > 0, got "
                       f"{self.s!r}.")
    rule.check_finite(w_post=self.w_post)
    if not rule.is_integer(self.fallback_step) or self.fallback_step < 0:
      raise ValueError(f"two_pass: fallback_step must be a step index ≥ 0, got "
                       f"{self.fallback_step!r}.")
    object.__setattr__(self, "fallback_step", int(self.fallback_step))

  def levels(self) -> tuple[float, ...]:
    return (-float(self.s), float(self.w_post))

  def prepare(self, ctx: rule.Preparation) -> rule.Prepared:
    S = len(ctx.grid)  # noqa: N806
    if not 0 <= self.fallback_step < S:
      raise ValueError(f"two_pass: fallback_step must be a step index in [0, {S}), got "
                       f"{self.fallback_step!r}.")
    _, first = ctx.run(_CosineRecorder(w=-float(self.s), num_steps=S))
    cos_dist = first.rule_state.cos_dist
    steps = two_pass_transition(cos_dist, fallback_step=self.fallback_step)
    B = ctx.x_T.shape[0]  # noqa: N806
    state = TwoPassState(transition_step=jnp.full((B,), -1, jnp.int32), steps=steps,
                         cos_dist=cos_dist)
    return rule.Prepared(ctx.cond, ctx.null_cond, state)

  def init_state(self, batch: int) -> TwoPassState:
    return TwoPassState(transition_step=jnp.full((batch,), -1, jnp.int32),
                        steps=jnp.zeros((batch,), jnp.int32), cos_dist=jnp.zeros((0, batch)))

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    w, switched = StepSwitch(w_pre=-float(self.s), w_post=float(self.w_post),
                             steps=state.steps).weight(state, k, t, d_eps, d_x0, schedule=schedule)
    return w, state.replace(transition_step=switched.transition_step)


def fire_steps(rule: guidance.Strategy, d_eps: jax.Array, d_x0: jax.Array, *, t: jax.Array,
               schedule: NoiseSchedule) -> jax.Array:
  """The step k̂ [B] int32 at which an online rule fires on recorded sequences (−1: never).

  Runs `rule.weight` over d_eps, d_x0 [S, B] (step k sees d_k, as inside the sampler) with the
  grid t [S]. On a trajectory sampled under the rule's w_pre, this is the step at which the rule
  run in the sampler would switch: until it fires the two trajectories are the same.
  """
  d_eps, d_x0 = jnp.asarray(d_eps, jnp.float32), jnp.asarray(d_x0, jnp.float32)
  if d_eps.ndim != 2 or d_eps.shape != d_x0.shape:
    raise ValueError(f"fire_steps needs d_eps and d_x0 of one shape [S, B], got {d_eps.shape} "
                     f"and {d_x0.shape}.")

  def body(state, xs):
    k, t_k, de, dx = xs
    _, state = rule.weight(state, k, t_k, de, dx, schedule=schedule)
    return state, None

  S = d_eps.shape[0]  # noqa: N806
  xs = (jnp.arange(S, dtype=jnp.int32), jnp.asarray(t, jnp.int32), d_eps, d_x0)
  state, _ = jax.lax.scan(body, rule.init_state(d_eps.shape[1]), xs)
  return state.transition_step


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """1 − cos(a_b, b_b) per sample b of [B, ...] arrays (flattened), as the authors record it."""
  a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
  dot = jnp.sum(a * b, axis=1)
  norms = jnp.maximum(jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1), 1e-8)
  return 1.0 - dot / norms


def two_pass_transition(c: jax.Array, *, fallback_step: int = 5) -> jax.Array:
  """The authors' two-pass transition [B] int32 from a first pass's cosine distances c [S, B].

  c_k = 1 − cos(x_k, x_{k+1}) between the iterate before and after step k. The transition is the
  first strict local minimum of c (an index 1 ≤ k ≤ S−2 with c_{k−1} > c_k < c_{k+1}, scipy's
  `argrelextrema(c, np.less)`); if that is index 1 and another minimum exists, the second one;
  `fallback_step` if there is none. The second pass applies w_post from that step on.
  """
  c = jnp.asarray(c)
  S = c.shape[0]  # noqa: N806
  if S < 3:
    raise ValueError(f"two_pass_transition needs at least 3 steps, got S = {S}.")
  inner = (c[1:-1] < c[:-2]) & (c[1:-1] < c[2:])  # [S−2, B], index k−1 ↔ step k
  idx = jnp.arange(1, S - 1)[:, None]
  none = jnp.int32(S)
  first = jnp.min(jnp.where(inner, idx, none), axis=0)
  after_one = jnp.min(jnp.where(inner & (idx > 1), idx, none), axis=0)
  tp = jnp.where((first == 1) & (after_one < S), after_one, first)
  return jnp.where(first < S, tp, fallback_step).astype(jnp.int32)
