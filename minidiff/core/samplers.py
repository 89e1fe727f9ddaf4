"""DDIM (Song et al. 2021), DDPM ancestral (Ho et al. 2020) and DPM-Solver++(2M) (Lu et al. 2022)
sampling with per-step guidance.

The whole loop is one `jax.lax.fori_loop` over a time grid built before it (`_run_steps`, the one
sampling loop of the package: every guidance rule runs in it with every stepper); each step's PRNG
key is split up front. Per step: the conditions the rule's branches see, one forward pass for the
branches the rule needs (cond and null concatenated into a 2B batch), the rule's guided ε̂ (for a
w-strategy ε̂ = ε_u + w·(ε_c − ε_u)), then the sampler's stepper, then the rule's `after_step`
(minidiff.core.rule has the interface). A stepper (`Stepper`) has `init(x_T)` (the
solver state it carries between steps: nothing for DDIM and DDPM, the previous x̂₀ and step size
for the multistep DPM-Solver++) and `step(...)`; `ddim_step` and `ddpm_step` are one-step
functions of one signature, wrapped as `OneStep` steppers.

Time runs on the model's scale t = 0 … T−1 (T−1 ≈ pure noise); `t_prev = −1` marks the last step,
to x₀, with ᾱ_{−1} = 1.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from minidiff.core import guidance, registry, rule, transitions
from minidiff.core.rule import Rule
from minidiff.core.schedule import NoiseSchedule

PyTree = Any
EpsFn = guidance.EpsFn
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
SPACINGS = ("uniform", "trailing", "linspace")


@struct.dataclass
class Diagnostics:
  """Per-step record of a sampling run (S steps, batch B).

  d_eps / d_x0 are NaN at every step when the strategy skips a branch (none, conditional, or any
  constant-branch strategy) unless `compute_d=True` forces both branches.
  """

  t: jax.Array  # [S] int32 timestep grid, descending
  d_eps: jax.Array  # [S, B] ‖ε_c − ε_u‖₂ per sample (plain L2 over all pixels)
  d_x0: jax.Array  # [S, B] ‖x̂₀_c − x̂₀_u‖₂ per sample (unclipped x̂₀)
  w: jax.Array  # [S, B] guidance weight applied
  transition_step: jax.Array  # [B] int32 step k where w_post took over, −1 if never / n.a.
  x0: jax.Array  # [len(x0_steps), B, H, W, C] the (clipped) x̂₀ at the chosen step indices
  rule_state: Any = None  # the rule's carried state after the last step (pytree, [B] leaves)


def time_grid(T: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:  # noqa: N803
  """Descending int32 timesteps (length num_steps) on the 0…T−1 scale.

  Args:
    T: number of training timesteps.
    num_steps: sampling steps S, 1 ≤ S ≤ T.
    spacing: "uniform" (DDIM's leading grid k·⌊T/S⌋, ends at 0, starts below T−1),
      "trailing" (round(T − k·T/S) − 1, starts at T−1; Lin et al. 2024) or "linspace"
      (round of S evenly spaced points from T−1 to 0).

  Returns:
    np.ndarray [S] int32, strictly decreasing.
  """
  if spacing not in SPACINGS:
    raise ValueError(f"Unknown spacing {spacing!r}; choose one of {SPACINGS}.")
  if int(num_steps) != num_steps or not 1 <= num_steps <= T:
    raise ValueError(f"num_steps must be an integer in [1, T] = [1, {T}], got {num_steps!r}.")
  S = int(num_steps)  # noqa: N806
  if spacing == "uniform":
    ts = np.arange(S)[::-1] * (T // S)
  elif spacing == "trailing":
    ts = np.round(T - np.arange(S) * (T / S)) - 1
  else:
    ts = np.round(np.linspace(T - 1, 0, S))
  return ts.astype(np.int32)


def _per_sample(a: jax.Array, x: jax.Array) -> jax.Array:
  """Broadcasts a scalar or per-sample [B] value against x [B, ...]."""
  a = jnp.asarray(a, x.dtype)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def _alpha_bars(schedule: NoiseSchedule, t: jax.Array, t_prev: jax.Array, x: jax.Array):
  """(ᾱ_t, ᾱ_prev) broadcast against x, with ᾱ_{−1} = 1 for the final step."""
  t_prev = jnp.asarray(t_prev)
  ab_prev = jnp.where(t_prev >= 0, schedule.alpha_bar[jnp.maximum(t_prev, 0)], 1.0)
  return _per_sample(schedule.alpha_bar[t], x), _per_sample(ab_prev, x)


def _predict_x0(x_t, eps, ab_t, clip_x0):
  """x̂₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, optionally clipped to [−1, 1]."""
  x0_hat = (x_t - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)  # Song et al. eq. 12, "predicted x₀"
  return jnp.clip(x0_hat, -1.0, 1.0) if clip_x0 else x0_hat


def ddim_step(
    schedule: NoiseSchedule,
    x_t: jax.Array,
    eps: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    key: jax.Array,
    *,
    eta: float = 0.0,
    clip_x0: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """One DDIM step x_t → x_prev (Song et al. 2021, eq. 12 with σ_t(η) of eq. 16).

  η = 0 is deterministic DDIM; η = 1 is the DDPM posterior on the same grid.

  Args:
    schedule: the noise schedule.
    x_t: current sample [B, H, W, C].
    eps: (guided) noise prediction at (x_t, t).
    t: current timestep, scalar or [B] int32.
    t_prev: next timestep on the grid, −1 for the final step to x₀.
    key: PRNG key for the fresh noise (not used when η is the Python number 0).
    eta: η ∈ [0, 1].
    clip_x0: clip x̂₀ to [−1, 1] (ε is then re-derived from the clipped x̂₀).

  Returns:
    (x_prev, x̂₀), both [B, H, W, C].
  """
  ab_t, ab_prev = _alpha_bars(schedule, t, t_prev, x_t)
  x0_hat = _predict_x0(x_t, eps, ab_t, clip_x0)
  if clip_x0:
    eps = (x_t - jnp.sqrt(ab_t) * x0_hat) / jnp.sqrt(1.0 - ab_t)  # ε consistent with clipped x̂₀
  # σ_t(η) = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_prev)  (Song et al. eq. 16)
  sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t)) * jnp.sqrt(1.0 - ab_t / ab_prev)
  dir_xt = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps  # eq. 12, "direction to x_t"
  x_prev = jnp.sqrt(ab_prev) * x0_hat + dir_xt  # eq. 12 without its noise term
  if isinstance(eta, (int, float)) and eta == 0:
    return x_prev, x0_hat  # deterministic DDIM: no noise drawn (also saves compiling the RNG)
  z = jax.random.normal(key, x_t.shape, x_t.dtype)
  return x_prev + sigma * z, x0_hat  # eq. 12: + σ_t z


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: jax.Array,
    eps: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    key: jax.Array,
    *,
    eta: float = 1.0,
    clip_x0: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """One DDPM ancestral step: a draw from the posterior q(x_prev | x_t, x̂₀) (Ho et al. eq. 6–7).

  On a strided grid the step's β is 1 − ᾱ_t/ᾱ_prev; the result equals `ddim_step` with η = 1.
  Same signature as `ddim_step`; `eta` is ignored (the posterior variance β̃ is fixed).

  Returns:
    (x_prev, x̂₀), both [B, H, W, C].
  """
  del eta
  ab_t, ab_prev = _alpha_bars(schedule, t, t_prev, x_t)
  x0_hat = _predict_x0(x_t, eps, ab_t, clip_x0)
  beta = 1.0 - ab_t / ab_prev  # β of the (strided) step, α = ᾱ_t/ᾱ_prev
  # μ̃ = √ᾱ_prev β/(1−ᾱ_t) x̂₀ + √α (1−ᾱ_prev)/(1−ᾱ_t) x_t  (Ho et al. eq. 7)
  mean = (jnp.sqrt(ab_prev) * beta / (1.0 - ab_t)) * x0_hat + (
      jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)) * x_t
  var = (1.0 - ab_prev) / (1.0 - ab_t) * beta  # β̃ = (1−ᾱ_prev)/(1−ᾱ_t) β  (Ho et al. eq. 7)
  z = jax.random.normal(key, x_t.shape, x_t.dtype)
  return mean + jnp.sqrt(jnp.maximum(var, 0.0)) * z, x0_hat


class Stepper(Protocol):
  """A sampler's update rule, with the solver state it carries from one step to the next.

  `init(x_T)` gives the initial state (a pytree; `()` for one-step samplers); `step(schedule,
  state, x_t, eps, t, t_prev, key, *, eta, clip_x0)` returns (x_prev, x̂₀, new state), with the
  arguments of `ddim_step`.
  """

  def init(self, x_T: jax.Array) -> PyTree:  # noqa: N803
    ...

  def step(self, schedule: NoiseSchedule, state: PyTree, x_t: jax.Array, eps: jax.Array,
           t: jax.Array, t_prev: jax.Array, key: jax.Array, *, eta: float, clip_x0: bool
           ) -> tuple[jax.Array, jax.Array, PyTree]:
    ...


@dataclasses.dataclass(frozen=True)
class OneStep:
  """A stateless stepper around a one-step function of `ddim_step`'s signature."""

  fn: Callable

  def init(self, x_T: jax.Array) -> tuple:  # noqa: N803
    del x_T
    return ()

  def step(self, schedule, state, x_t, eps, t, t_prev, key, *, eta, clip_x0):
    x_prev, x0_hat = self.fn(schedule, x_t, eps, t, t_prev, key, eta=eta, clip_x0=clip_x0)
    return x_prev, x0_hat, state


@struct.dataclass
class MultistepState:
  """What DPM-Solver++(2M) carries between steps."""

  x0_prev: jax.Array  # [B, H, W, C] x̂₀ of the previous step (zeros before the first)
  h_prev: jax.Array  # [B] float32: the previous step's h = λ_{t_{i−1}} − λ_{t_{i−2}}
  count: jax.Array  # scalar int32: steps taken so far


def _log_snr_half(ab: jax.Array) -> jax.Array:
  """λ = log(α/σ) = ½ log(ᾱ/(1−ᾱ)) (Lu et al. 2022), for ᾱ < 1."""
  return 0.5 * (jnp.log(ab) - jnp.log1p(-ab))


@dataclasses.dataclass(frozen=True)
class DPMSolverPP:
  """DPM-Solver++ multistep in data prediction (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

  With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ) and h_i = λ_{t_i} − λ_{t_{i−1}}, each step is
    x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D_i,
  with D_i = x̂₀ of this step (first order: this equals deterministic DDIM) or, for order 2 and
  from the second step on, D_i = (1 + 1/(2r_i)) x̂₀_i − 1/(2r_i) x̂₀_{i−1}, r_i = h_{i−1}/h_i.
  The last step, to ᾱ = 1 (σ = 0, λ = ∞), is first order (diffusers' `lower_order_final`): it
  returns D = x̂₀. Deterministic: η and the key are not used. x̂₀ is clipped when `clip_x0`.
  """

  order: int = 2

  def __post_init__(self):
    if self.order not in (1, 2):
      raise ValueError(f"DPMSolverPP order must be 1 or 2, got {self.order!r}.")

  def init(self, x_T: jax.Array) -> MultistepState:  # noqa: N803
    return MultistepState(x0_prev=jnp.zeros_like(x_T), h_prev=jnp.zeros(x_T.shape[:1], x_T.dtype),
                          count=jnp.zeros((), jnp.int32))

  def step(self, schedule, state, x_t, eps, t, t_prev, key, *, eta, clip_x0):
    del key, eta
    ab_t, ab_prev = _alpha_bars(schedule, t, t_prev, x_t)
    x0_hat = _predict_x0(x_t, eps, ab_t, clip_x0)
    final = jnp.asarray(t_prev) < 0
    ab_next = jnp.where(final, 0.5, ab_prev)  # any ᾱ < 1 keeps λ finite on the (unused) branch
    h = _log_snr_half(ab_next) - _log_snr_half(ab_t)  # h_i = λ_{t_i} − λ_{t_{i−1}}
    h = jnp.broadcast_to(h, x_t.shape[:1] + (1,) * (x_t.ndim - 1))
    if self.order == 2:
      r = _per_sample(state.h_prev, x_t) / h  # r_i = h_{i−1}/h_i
      d = (1.0 + 0.5 / r) * x0_hat - (0.5 / r) * state.x0_prev  # D_i, Lu et al. Alg. 2
      second = (state.count > 0) & ~final
      d = jnp.where(second, d, x0_hat)
    else:
      d = x0_hat
    sigma_ratio = jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t))  # σ_{t_i}/σ_{t_{i−1}} (0 at the end)
    # −α_{t_i}(e^{−h} − 1) = α_{t_i} − σ_{t_i} α_{t_{i−1}}/σ_{t_{i−1}}  (e^{−h} = σ_t α_s/(α_t σ_s))
    x_prev = sigma_ratio * x_t + (jnp.sqrt(ab_prev) - sigma_ratio * jnp.sqrt(ab_t)) * d
    new = MultistepState(x0_prev=x0_hat, h_prev=h.reshape(x_t.shape[:1]).astype(x_t.dtype),
                         count=state.count + 1)
    return x_prev, x0_hat, new


_STEPPERS: dict[str, Stepper] = {"ddim": OneStep(ddim_step), "ddpm": OneStep(ddpm_step),
                                 "dpmpp_2m": DPMSolverPP(order=2)}


def make_stepper(sampler: "str | Stepper") -> Stepper:
  """The stepper of a sampler name (one of SAMPLERS), or the given stepper itself."""
  if isinstance(sampler, str):
    if sampler not in _STEPPERS:
      raise ValueError(f"Unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
    return _STEPPERS[sampler]
  if not (hasattr(sampler, "init") and hasattr(sampler, "step")):
    raise ValueError(f"sampler must be one of {SAMPLERS} or a Stepper (init, step), got {sampler!r}.")
  return sampler


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
  """Everything about a run that is fixed before tracing (validated on the host)."""

  strategy: Rule
  stepper: Stepper
  use_cond: bool
  use_uncond: bool
  grid: np.ndarray  # [S] t_k
  slots: np.ndarray  # [S] x̂₀ snapshot slot of step k; num_snapshots = not recorded
  num_snapshots: int  # distinct recorded steps
  snapshot_order: np.ndarray  # [len(x0_steps)] slot of each requested step, in request order


def _plan(schedule, strategy, sampler, num_steps, eta, spacing, x0_steps, compute_d) -> _Plan:
  """Validates every option and precomputes the grid; raises ValueError before any compile."""
  if isinstance(strategy, str):
    strategy = registry.make_rule(strategy)
  if not isinstance(strategy, Rule):
    raise ValueError(f"strategy must be a guidance rule (minidiff.core.rule.Rule) or one of "
                     f"{registry.RULE_NAMES}, got {strategy!r}.")
  stepper = make_stepper(sampler)
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta!r}.")
  T = schedule.T  # noqa: N806
  grid = time_grid(T, num_steps, spacing)
  strategy.validate(T)
  S = len(grid)  # noqa: N806
  steps = [int(k) for k in x0_steps]
  if any(not -S <= k < S for k in steps):
    raise ValueError(f"x0_steps must be step indices in [−{S}, {S}), got {tuple(x0_steps)}.")
  steps = [k % S for k in steps]
  unique = sorted(set(steps))
  slots = np.full(S, len(unique), np.int32)
  slots[unique] = np.arange(len(unique), dtype=np.int32)
  return _Plan(strategy=strategy, stepper=stepper,
               use_cond=strategy.needs_cond or compute_d,
               use_uncond=strategy.needs_uncond or compute_d,
               grid=grid, slots=slots, num_snapshots=len(unique),
               snapshot_order=np.asarray([unique.index(k) for k in steps], np.int32))


def _guided_step(plan: _Plan, eps_fn, schedule, cond, null_cond, eta, clip_x0,
                 x_t, state, solver, k, t, t_prev, key):
  """One sampling step: the rule's conditions, one forward pass, the rule's ε̂, the stepper, the
  rule's after_step (solver: the stepper's state). Returns (x_prev, x̂₀, state, solver, record)."""
  B = x_t.shape[0]  # noqa: N806
  t_b = jnp.full((B,), t, jnp.int32)
  cond_k, null_k = plan.strategy.conditions(state, k, t, cond, null_cond, schedule=schedule)

  def branches(x):  # ε_c, ε_u at x in one forward pass, at this step's t and conditions
    return guidance.predict_branches(eps_fn, x, t_b, cond_k, null_k, use_cond=plan.use_cond,
                                     use_uncond=plan.use_uncond)

  eps_c, eps_u = branches(x_t)
  if plan.use_cond and plan.use_uncond:
    d_eps = jnp.linalg.norm((eps_c - eps_u).reshape(B, -1), axis=1)  # d_t = ‖ε_c − ε_u‖₂
  else:
    d_eps = jnp.full((B,), jnp.nan, x_t.dtype)
  # x̂₀ = (x_t − √(1−ᾱ)ε)/√ᾱ, so ‖x̂₀_c − x̂₀_u‖ = σ_t ‖ε_c − ε_u‖ with σ_t = √((1−ᾱ_t)/ᾱ_t)
  d_x0 = d_eps * schedule.sigma(t)
  signals = rule.StepSignals(k=k, t=t, x_t=x_t, eps_c=eps_c, eps_u=eps_u, d_eps=d_eps, d_x0=d_x0)
  eps, w, state = plan.strategy.predict(signals, state, schedule=schedule, branches=branches,
                                        clip_x0=clip_x0)
  x_prev, x0_hat, solver = plan.stepper.step(schedule, solver, x_t, eps, t, t_prev, key, eta=eta,
                                             clip_x0=clip_x0)
  state = plan.strategy.after_step(state, k, x_t, x_prev)
  return x_prev, x0_hat, state, solver, (d_eps, d_x0, w)


def _scan_data(plan: _Plan, key: jax.Array):
  """(k, t_k, t_{k+1}, key_k, snapshot slot_k) of every step, each with a leading [S] axis."""
  S = len(plan.grid)  # noqa: N806
  t_prev = np.append(plan.grid[1:], -1).astype(np.int32)
  keys = jax.random.split(key, S)  # one fresh key per step, never reused
  return (jnp.arange(S, dtype=jnp.int32), jnp.asarray(plan.grid), jnp.asarray(t_prev), keys,
          jnp.asarray(plan.slots))


@struct.dataclass
class _Carry:
  """What the sampling loop carries from step to step."""

  x: jax.Array  # [B, H, W, C] x_t before the step
  state: PyTree  # the rule's per-sample state
  solver: PyTree  # the stepper's state
  snaps: jax.Array  # [num_snapshots + 1, B, H, W, C] recorded x̂₀ (the last row is scratch)
  record: tuple  # (d_eps, d_x0, w), each [S, B]
  kept: PyTree  # None, or (x_t, solver state) before every step [S + 1, …] (shared prefixes)


def _run_steps(plan: _Plan, eps_fn, schedule, cond, null_cond, eta, clip_x0, key,
               k_start, k_stop, carry: _Carry) -> _Carry:
  """THE sampling loop: steps k_start … k_stop − 1 of the plan's grid (bounds may be traced).

  Step k uses key k of `split(key, S)` whatever k_start is, so a run continued from a snapshot
  draws the same noise as the full run.
  """
  ks, ts, t_prevs, keys, slots = _scan_data(plan, key)

  def body(k, c: _Carry) -> _Carry:
    kept = c.kept
    if kept is not None:  # x_t and the solver state before step k (the arms' snapshots)
      kept = jax.tree.map(lambda b, v: b.at[k].set(v), kept, (c.x, c.solver))
    x_prev, x0_hat, state, solver, (de, dx, w) = _guided_step(
        plan, eps_fn, schedule, cond, null_cond, eta, clip_x0, c.x, c.state, c.solver,
        ks[k], ts[k], t_prevs[k], keys[k])
    snaps = c.snaps.at[slots[k]].set(x0_hat)  # slot n is a scratch row for unrecorded steps
    d_eps, d_x0, w_all = c.record
    record = (d_eps.at[k].set(de), d_x0.at[k].set(dx), w_all.at[k].set(w))
    return _Carry(x_prev, state, solver, snaps, record, kept)

  return jax.lax.fori_loop(k_start, k_stop, body, carry)


def _start(plan: _Plan, x_T, state, *, keep: bool = False) -> _Carry:  # noqa: N803
  """The loop's carry before step 0 (records NaN until a step writes them)."""
  S, B = len(plan.grid), x_T.shape[0]  # noqa: N806
  nan = jnp.full((S, B), jnp.nan, x_T.dtype)
  solver = plan.stepper.init(x_T)
  kept = None
  if keep:
    kept = jax.tree.map(lambda v: jnp.zeros((S + 1,) + jnp.shape(v), jnp.asarray(v).dtype),
                        (x_T, solver))
  snaps = jnp.zeros((plan.num_snapshots + 1,) + x_T.shape, x_T.dtype)
  return _Carry(x_T, state, solver, snaps, (nan, nan, nan), kept)


def _diagnostics(plan: _Plan, c: _Carry) -> "Diagnostics":
  d_eps, d_x0, w = c.record
  return Diagnostics(t=jnp.asarray(plan.grid), d_eps=d_eps, d_x0=d_x0, w=w,
                     transition_step=c.state.transition_step, x0=c.snaps[plan.snapshot_order],
                     rule_state=c.state)


def _prepare(plan: _Plan, eps_fn, embed_fn, schedule, x_T, cond, null_cond, key, run):  # noqa: N803
  """The rule's `prepare`: (cond, null_cond, initial state) the loop runs with."""
  ctx = rule.Preparation(eps_fn=eps_fn, embed_fn=embed_fn, x_T=x_T, cond=cond,
                         null_cond=null_cond, key=key, grid=plan.grid, schedule=schedule, run=run)
  prepared = plan.strategy.prepare(ctx)
  state = prepared.state
  if state is None:
    state = plan.strategy.init_state(x_T.shape[0])
  return prepared.cond, prepared.null_cond, state


def sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,  # noqa: N803
    cond: PyTree,
    null_cond: PyTree,
    key: jax.Array,
    *,
    strategy: Strategy | str,
    sampler: str | Stepper = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_x0: bool = True,
    x0_steps: Sequence[int] = (),
    compute_d: bool = False,
    embed_fn: Callable | None = None,
) -> tuple[jax.Array, Diagnostics]:
  """Samples x₀ from x_T with a guidance rule, as one loop over the time grid (one XLA program).

  Args:
    eps_fn: denoiser `eps_fn(x_t [B,H,W,C], t [B] int32, cond) -> ε [B,H,W,C]`.
    schedule: the noise schedule the model was trained with.
    x_T: initial noise [B, H, W, C].
    cond: condition pytree with leading dim B (may be None if the strategy never needs it).
    null_cond: null condition, same structure (may be None if never needed).
    key: PRNG key; split into one key per step.
    strategy: a guidance rule (minidiff.core.rule.Rule: a strategy, a transition rule, a peer's
      mitigation) or a registered rule name (its defaults).
    sampler: "ddim", "ddpm" (ancestral; ignores eta), "dpmpp_2m" (DPM-Solver++(2M),
      deterministic; ignores eta) or a `Stepper`.
    num_steps: S, 1 ≤ S ≤ T.
    eta: DDIM η ∈ [0, 1].
    spacing: time-grid spacing, see `time_grid`.
    clip_x0: clip x̂₀ to [−1, 1] at every step.
    x0_steps: step indices k (negative counts from the end, repeats allowed) whose x̂₀ is recorded.
    compute_d: evaluate both branches even if the strategy needs one, so d_eps/d_x0 are filled.
    embed_fn: cond → the model's condition-embedding dict, for the rules that act on the
      embedding (wen, cads); None for the others.

  Returns:
    (x₀ [B, H, W, C], Diagnostics).
  """
  plan = _plan(schedule, strategy, sampler, num_steps, eta, spacing, x0_steps, compute_d)
  _check_conds(plan, cond, null_cond)
  options = dict(sampler=sampler, num_steps=num_steps, eta=eta, spacing=spacing, clip_x0=clip_x0,
                 embed_fn=embed_fn)
  run = lambda r: sample(eps_fn, schedule, x_T, cond, null_cond, key, strategy=r, **options)  # noqa: E731
  cond, null_cond, state = _prepare(plan, eps_fn, embed_fn, schedule, x_T, cond, null_cond, key,
                                    run)
  c = _run_steps(plan, eps_fn, schedule, cond, null_cond, eta, clip_x0, key, 0, len(plan.grid),
                 _start(plan, x_T, state))
  return c.x, _diagnostics(plan, c)


def sample_reference(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,  # noqa: N803
    cond: PyTree,
    null_cond: PyTree,
    key: jax.Array,
    *,
    strategy: Strategy | str,
    sampler: str | Stepper = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_x0: bool = True,
    x0_steps: Sequence[int] = (),
    compute_d: bool = False,
    embed_fn: Callable | None = None,
    jit_step: bool = True,
) -> tuple[jax.Array, Diagnostics]:
  """`sample` as a plain Python loop over steps (same keys, same math), for tests and benchmarks.

  With jit_step=True each step is one dispatch of a jitted step function (compiled once).
  """
  plan = _plan(schedule, strategy, sampler, num_steps, eta, spacing, x0_steps, compute_d)
  _check_conds(plan, cond, null_cond)
  options = dict(sampler=sampler, num_steps=num_steps, eta=eta, spacing=spacing, clip_x0=clip_x0,
                 embed_fn=embed_fn, jit_step=jit_step)
  run = lambda r: sample_reference(eps_fn, schedule, x_T, cond, null_cond, key, strategy=r,  # noqa: E731
                                   **options)
  cond, null_cond, state0 = _prepare(plan, eps_fn, embed_fn, schedule, x_T, cond, null_cond, key,
                                     run)

  def step(x_t, state, solver, k, t, t_prev, step_key):
    return _guided_step(plan, eps_fn, schedule, cond, null_cond, eta, clip_x0,
                        x_t, state, solver, k, t, t_prev, step_key)

  step = jax.jit(step) if jit_step else step
  ks, ts, t_prevs, keys, _ = _scan_data(plan, key)
  x, state, solver = x_T, state0, plan.stepper.init(x_T)
  records, snaps = [], {}
  for k in range(len(plan.grid)):
    x, x0_hat, state, solver, record = step(x, state, solver, ks[k], ts[k], t_prevs[k], keys[k])
    records.append(record)
    if plan.slots[k] < plan.num_snapshots:
      snaps[int(plan.slots[k])] = x0_hat
  d_eps, d_x0, w = (jnp.stack(r) for r in zip(*records))
  x0 = (jnp.stack([snaps[int(i)] for i in plan.snapshot_order]) if snaps
        else jnp.zeros((0,) + x_T.shape, x_T.dtype))
  return x, Diagnostics(t=jnp.asarray(plan.grid), d_eps=d_eps, d_x0=d_x0, w=w,
                        transition_step=state.transition_step, x0=x0, rule_state=state)


def _check_conds(plan: _Plan, cond: PyTree, null_cond: PyTree) -> None:
  if plan.use_cond and cond is None:
    raise ValueError(f"{type(plan.strategy).__name__} needs the conditional branch: cond is None.")
  if plan.use_uncond and null_cond is None:
    raise ValueError(f"{type(plan.strategy).__name__} needs the null branch: null_cond is None.")


def make_sampler(
    eps_apply: Callable[[PyTree, jax.Array, jax.Array, PyTree], jax.Array],
    *,
    schedule: NoiseSchedule,
    strategy: Strategy | str,
    sampler: str | Stepper = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_x0: bool = True,
    x0_steps: Sequence[int] = (),
    compute_d: bool = False,
    embed_apply: Callable[[PyTree, PyTree], PyTree] | None = None,
) -> Callable[[PyTree, jax.Array, PyTree, PyTree, jax.Array], tuple[jax.Array, Diagnostics]]:
  """Builds a jitted `(params, x_T, cond, null_cond, key) -> (x₀, Diagnostics)`.

  `eps_apply(params, x_t, t, cond)` is the model; its params are a jit argument, not a baked
  constant; `embed_apply(params, cond)` its condition embedding (for wen and cads). Options are
  validated here, before any compile; they mean what they mean in `sample`. The schedule and the
  grid are compile-time constants.
  """
  options = dict(strategy=strategy, sampler=sampler, num_steps=num_steps, eta=eta, spacing=spacing,
                 clip_x0=clip_x0, x0_steps=tuple(x0_steps), compute_d=compute_d)
  plan = _plan(schedule, strategy, sampler, num_steps, eta, spacing, x0_steps, compute_d)
  options["strategy"] = plan.strategy

  @jax.jit
  def run(params, x_T, cond, null_cond, key):  # noqa: N803
    eps_fn = lambda x_t, t, c: eps_apply(params, x_t, t, c)  # noqa: E731
    embed_fn = None if embed_apply is None else (lambda c: embed_apply(params, c))
    return sample(eps_fn, schedule, x_T, cond, null_cond, key, embed_fn=embed_fn, **options)

  return run


def sample_switch_family(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,  # noqa: N803
    cond: PyTree,
    null_cond: PyTree,
    key: jax.Array,
    *,
    w_pre: float,
    w_post: float,
    switch_steps: jax.Array,
    sampler: str | Stepper = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_x0: bool = True,
) -> tuple[jax.Array, Diagnostics]:
  """Static-transition arms that differ only in τ, sharing their common start (one prefix pass).

  Arm a is `StaticTransition(w_pre, τ_a, w_post)` with switch step k_a = the first k with t_k ≤ τ_a
  (`switch_step`). Every arm follows the same trajectory under w_pre until its own k_a, so the
  prefix is sampled once (steps 0 … max k_a − 1, recording x_t before every step) and each arm
  continues from its snapshot x_{k_a} under w_post with the keys of the full run (key k at step k).
  Both branches are evaluated at every step, as a static transition run alone does, so samples and
  diagnostics (d_t before the switch too) equal running each arm on its own (same noises, keys).

  Args:
    eps_fn, schedule, x_T, cond, null_cond, key, sampler, num_steps, eta, spacing, clip_x0: as in
      `sample`.
    w_pre: guidance weight before the switch (0 = delayed CFG, −s = opposite guidance).
    w_post: guidance weight from the switch on.
    switch_steps: int32 [A] switch step of each arm, each in [0, S].

  Returns:
    (x₀ [A, B, H, W, C], Diagnostics with a leading arm axis on d_eps, d_x0, w [A, S, B],
    transition_step [A, B] and x0 [A, 0, B, H, W, C] (no x̂₀ snapshots)).
  """
  pre = _plan(schedule, guidance.Constant(w=w_pre), sampler, num_steps, eta, spacing, (), True)
  post = _plan(schedule, guidance.Constant(w=w_post), sampler, num_steps, eta, spacing, (), True)
  _check_conds(post, cond, null_cond)
  S, B = len(pre.grid), x_T.shape[0]  # noqa: N806
  switch_steps = jnp.asarray(switch_steps, jnp.int32)

  # The shared start: w_pre up to the last arm's switch, x_t (and the solver state) kept before
  # every step.
  k_max = jnp.max(switch_steps)
  shared = _run_steps(pre, eps_fn, schedule, cond, null_cond, eta, clip_x0, key, 0, k_max,
                      _start(pre, x_T, pre.strategy.init_state(B), keep=True))
  kept = jax.tree.map(lambda b, v: b.at[k_max].set(v), shared.kept, (shared.x, shared.solver))

  def arm(k_a):
    # Each arm: from its snapshot x_{k_a}, w_post to the end (steps ≥ k_a of the prefix record
    # are overwritten; steps < k_a keep w_pre's record).
    mask = (jnp.arange(S) < k_a)[:, None]
    record = tuple(jnp.where(mask, r, jnp.nan) for r in shared.record)
    x_a, solver_a = jax.tree.map(lambda b: b[k_a], kept)
    start = _Carry(x_a, post.strategy.init_state(B), solver_a, shared.snaps[:1], record, None)
    c = _run_steps(post, eps_fn, schedule, cond, null_cond, eta, clip_x0, key, k_a, S, start)
    return c.x, c.record

  x0, (d_eps, d_x0, w) = jax.lax.map(arm, switch_steps)
  transition = jnp.where(switch_steps < S, switch_steps, -1)
  return x0, Diagnostics(t=jnp.asarray(pre.grid), d_eps=d_eps, d_x0=d_x0, w=w,
                          transition_step=jnp.broadcast_to(transition[:, None], (len(switch_steps), B)),
                          x0=jnp.zeros((len(switch_steps), 0) + x_T.shape, x_T.dtype))


@struct.dataclass
class TwoPassResult:
  """What the authors' two-pass rule adds to the second pass's Diagnostics."""

  cos_dist: jax.Array  # [S, B] first pass: 1 − cos(x_k, x_{k+1}) around each step k
  transition_step: jax.Array  # [B] int32 step from which the second pass applies w_post


def sample_two_pass(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,  # noqa: N803
    cond: PyTree,
    null_cond: PyTree,
    key: jax.Array,
    *,
    s: float = 7.5,
    w_post: float = 7.5,
    fallback_step: int = 5,
    sampler: str | Stepper = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_x0: bool = True,
) -> tuple[jax.Array, Diagnostics, TwoPassResult]:
  """`sample` with the two-pass rule (`transitions.TwoPass`), returning what its first pass found.

  Returns:
    (x₀ [B, H, W, C] of pass 2, pass 2's Diagnostics, TwoPassResult with pass 1's cosine
    distances and each sample's switch step).
  """
  two = transitions.TwoPass(s=s, w_post=w_post, fallback_step=fallback_step)
  x0, diag = sample(eps_fn, schedule, x_T, cond, null_cond, key, strategy=two, sampler=sampler,
                    num_steps=num_steps, eta=eta, spacing=spacing, clip_x0=clip_x0)
  return x0, diag, TwoPassResult(cos_dist=diag.rule_state.cos_dist,
                                 transition_step=diag.rule_state.steps)


def switch_step(grid: np.ndarray, tau: int) -> int:
  """The step k at which a static transition at τ switches: the first k with t_k ≤ τ (S if none)."""
  after = np.flatnonzero(np.asarray(grid) <= tau)
  return int(after[0]) if len(after) else len(grid)
