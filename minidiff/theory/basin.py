"""Attraction-basin experiments on exact denoisers (Jain et al. 2025 on docs/science.md §5–6).

The construction: a memorized condition is a mixture π·δ(x − a) + (1−π)·N(μ_c, Σ_c) — an atom
at one training image a with weight π set by its duplication, plus a Gaussian fitted to the class —
while the null condition is a Gaussian fitted to all images (it generalises) and a control
condition is its class's Gaussian alone (nothing memorized).

The harness samples through `samplers.sample` with one strategy, `Switch`, whose w_pre, w_post, τ
and switch rule are per-sample arrays: a whole sweep (constant w, static τ, the dynamic rule in
either measure, opposite guidance) runs as one batch through one compiled program. `from_time`
rescales the schedule so the same program samples from any start time t₀ (the basin fraction).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from minidiff.core import guidance
from minidiff.theory import ideal
from minidiff.core import samplers
from minidiff.core.schedule import NoiseSchedule

STATIC, RULE_EPS, RULE_X0 = 0, 1, 2  # values of Switch.rule: how a sample's switch is decided
RULES = {"static": STATIC, "eps": RULE_EPS, "x0": RULE_X0}


@struct.dataclass
class SwitchState:
  """Carried state of `Switch`: the transition and the two dynamic rules' states."""

  transition_step: jax.Array  # [B] int32 step k at which w_post took over, −1 until then
  eps_rule: guidance.DynamicState
  x0_rule: guidance.DynamicState


@dataclasses.dataclass(frozen=True, eq=False)
class Switch(guidance.Strategy):
  """w = w_pre until a per-sample switch, w_post from it on (latched); all fields [B] arrays.

  rule = STATIC switches at the first step with t ≤ τ (τ = −1: never, τ ≥ T−1: from step 0, i.e. a
  constant w_post); RULE_EPS / RULE_X0 switch when `guidance.DynamicTransition`'s local-minimum
  rule fires on d_eps = ‖ε_c − ε_u‖ / d_x0 = ‖x̂₀_c − x̂₀_u‖ (same guards for both).
  """

  w_pre: jax.Array
  w_post: jax.Array
  tau: jax.Array
  rule: jax.Array
  min_step: int = 2
  peak_fraction: float = 1.0
  smooth: int = 1

  def levels(self) -> tuple[float, ...]:
    return ()  # traced per-sample values; both branches are always evaluated

  both_branches: ClassVar[bool] = True  # d needs both branches at every step

  def _rule(self, measure: str) -> guidance.DynamicTransition:
    return guidance.DynamicTransition(w_pre=0.0, w_post=1.0, measure=measure,
                                      min_step=self.min_step, peak_fraction=self.peak_fraction,
                                      smooth=self.smooth)

  def init_state(self, batch: int) -> SwitchState:
    return SwitchState(jnp.full((batch,), -1, jnp.int32), self._rule("eps").init_state(batch),
                       self._rule("x0").init_state(batch))

  def weight(self, state, k, t, d_eps, d_x0, *, schedule):
    _, eps_rule = self._rule("eps").weight(state.eps_rule, k, t, d_eps, d_x0, schedule=schedule)
    _, x0_rule = self._rule("x0").weight(state.x0_rule, k, t, d_eps, d_x0, schedule=schedule)
    switch = jnp.select([self.rule == RULE_EPS, self.rule == RULE_X0],
                        [eps_rule.transition_step >= 0, x0_rule.transition_step >= 0],
                        jnp.asarray(t) <= self.tau)  # STP: t ≤ τ
    ts = jnp.where((state.transition_step < 0) & switch, jnp.asarray(k, jnp.int32),
                   state.transition_step)
    w = jnp.where(ts >= 0, self.w_post, self.w_pre).astype(jnp.float32)
    return w, SwitchState(ts, eps_rule, x0_rule)


def from_time(schedule: NoiseSchedule, t0: int) -> NoiseSchedule:
  """A schedule of the same length with ᾱ'_j = ᾱ_{round(j·t₀/(T−1))}.

  Sampling it on the "linspace" grid (j = T−1 … 0) runs the original process from t₀ to 0, and as
  it is a traced pytree of unchanged shape, one compiled sampler serves every t₀.
  """
  T = schedule.T  # noqa: N806
  idx = np.round(np.arange(T) * (t0 / (T - 1))).astype(np.int32)
  ab = schedule.alpha_bar[idx]
  betas = 1.0 - ab / jnp.concatenate([jnp.ones((1,), ab.dtype), ab[:-1]])
  return NoiseSchedule(betas=betas, alpha_bar=ab)


@dataclasses.dataclass(frozen=True)
class MemorizedSetup:
  """A memorized condition, a control condition and a generalising null (module docstring)."""

  images: np.ndarray  # [N, H, W, C] the training set (de-duplicated)
  labels: np.ndarray  # [N]
  atom_index: int  # index of the memorized image a in `images`
  memorized: int  # condition id of the memorized class
  control: int  # condition id of the non-memorized class
  null_id: int
  atom_weight: float  # π
  denoiser: ideal.IdealDenoiser

  @property
  def atom(self) -> np.ndarray:
    return self.images[self.atom_index]


def build_setup(images: np.ndarray, labels: np.ndarray, schedule: NoiseSchedule, *,
                memorized: int = 3, control: int = 7, atom_weight: float = 0.7,
                atom_rank: int = 0, null_id: int = 10) -> MemorizedSetup:
  """Condition `memorized` = π·atom + (1−π)·Gaussian(its class); `control` = Gaussian(its class).

  The atom is the `atom_rank`-th image of the memorized class; null = Gaussian(all images).
  """
  images, labels = np.asarray(images, np.float32), np.asarray(labels)
  atom_index = int(np.flatnonzero(labels == memorized)[atom_rank])
  cls = ideal.GaussianDensity.fit(images[labels == memorized])
  conditions = {
      memorized: ideal.MixtureDensity.of(
          [ideal.GaussianDensity.atom(images[atom_index]), cls], [atom_weight, 1.0 - atom_weight]),
      control: ideal.GaussianDensity.fit(images[labels == control]),
  }
  denoiser = ideal.IdealDenoiser.build(conditions, ideal.GaussianDensity.fit(images), schedule,
                                       null_id=null_id)
  return MemorizedSetup(images, labels, atom_index, memorized, control, null_id, float(atom_weight),
                        denoiser)


def make_runner(*, num_steps: int = 50, min_step: int = 2, peak_fraction: float = 1.0,
                smooth: int = 1, clip_x0: bool = True):
  """Jitted `run(denoiser, x_T, cond, null_cond, w_pre, w_post, tau, rule) -> (x₀, Diagnostics)`.

  Deterministic DDIM (η = 0) on the "linspace" grid (starts at t = T−1); per-sample strategy
  arrays as in `Switch`; d_eps and d_x0 are recorded at every step. The denoiser (with its
  schedule, see `from_time`) is traced, so one compile serves every setup of the same structure.
  """

  @jax.jit
  def run(denoiser, x_T, cond, null_cond, w_pre, w_post, tau, rule):  # noqa: N803
    strategy = Switch(w_pre, w_post, tau, rule, min_step=min_step, peak_fraction=peak_fraction,
                      smooth=smooth)
    return samplers.sample(denoiser.eps, denoiser.schedule, x_T, cond, null_cond,
                           jax.random.key(0), strategy=strategy, num_steps=num_steps,
                           spacing="linspace", clip_x0=clip_x0, compute_d=True)

  return run


@dataclasses.dataclass(frozen=True)
class Arm:
  """One guidance setting of a sweep: w_pre until the switch, then w_post, for condition `cond`."""

  w_pre: float
  w_post: float = 7.5
  tau: int = -1  # static switch at t ≤ τ; −1 never, ≥ T−1 from the first step
  rule: str = "static"  # "static", or the dynamic rule on "eps" / "x0"
  cond: int | None = None  # condition id; None = the setup's memorized condition


def cfg(w: float, cond: int | None = None) -> Arm:
  """Constant w from the first step."""
  return Arm(w_pre=w, w_post=w, tau=-1, cond=cond)


def run_arms(run, setup: MemorizedSetup, x_T: np.ndarray, arms: Sequence[Arm], *,  # noqa: N803
             t0: int | None = None) -> tuple[np.ndarray, Any]:
  """Samples every arm from the same noises x_T [n, ...] in one batch of len(arms)·n.

  Returns (x₀ [len(arms), n, ...], Diagnostics as numpy with d_eps/d_x0/w [S, len(arms), n] and
  transition_step [len(arms), n]). t0 starts every trajectory at t₀ (x_T is then x_{t₀}; use
  constant-w arms, since τ would be read on the rescaled scale of `from_time`).
  """
  n, a = x_T.shape[0], len(arms)
  denoiser = setup.denoiser
  if t0 is not None:
    denoiser = denoiser.replace(schedule=from_time(denoiser.schedule, t0))
  per = lambda f, dt: jnp.asarray(np.repeat([f(arm) for arm in arms], n), dt)  # noqa: E731
  x0, diag = run(denoiser, jnp.asarray(np.tile(x_T, (a,) + (1,) * (x_T.ndim - 1))),
                 per(lambda r: setup.memorized if r.cond is None else r.cond, jnp.int32),
                 jnp.full((a * n,), setup.null_id, jnp.int32),
                 per(lambda r: r.w_pre, jnp.float32), per(lambda r: r.w_post, jnp.float32),
                 per(lambda r: r.tau, jnp.int32), per(lambda r: RULES[r.rule], jnp.int32))
  by_arm = lambda v: np.asarray(v).reshape(np.shape(v)[:-1] + (a, n))  # noqa: E731
  diag = diag.replace(t=np.asarray(diag.t), d_eps=by_arm(diag.d_eps), d_x0=by_arm(diag.d_x0),
                      w=by_arm(diag.w), transition_step=by_arm(diag.transition_step),
                      x0=np.asarray(diag.x0))
  return np.asarray(x0).reshape((a, n) + x_T.shape[1:]), diag


def copies(samples: np.ndarray, setup: MemorizedSetup) -> np.ndarray:
  """Copy test (docs/science.md §2): ‖x − a‖ < ‖x − NN₂‖/3, NN₂ the nearest other training image."""
  flat = np.asarray(samples, np.float64).reshape(-1, setup.atom.size)
  train = setup.images.reshape(len(setup.images), -1).astype(np.float64)
  d = _distances(flat, train)
  d_atom = d[:, setup.atom_index]
  d_other = np.delete(d, setup.atom_index, axis=1).min(axis=1)
  return (d_atom < d_other / 3.0).reshape(np.shape(samples)[:-3])


def nearest_labels(samples: np.ndarray, setup: MemorizedSetup) -> np.ndarray:
  """Label of each sample's nearest training image (pixel L2): the class a sample belongs to."""
  flat = np.asarray(samples, np.float64).reshape(-1, setup.atom.size)
  train = setup.images.reshape(len(setup.images), -1).astype(np.float64)
  return setup.labels[np.argmin(_distances(flat, train), axis=1)].reshape(np.shape(samples)[:-3])


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  sq = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
  return np.sqrt(np.maximum(sq, 0.0))


def atom_responsibility(setup: MemorizedSetup, x_t: np.ndarray, t: np.ndarray) -> np.ndarray:
  """r_atom(x_t) under the memorized condition: the posterior probability of the atom."""
  mix = setup.denoiser.densities[setup.denoiser.ids.index(setup.memorized)]
  return np.asarray(mix.responsibilities(jnp.asarray(x_t), jnp.asarray(t),
                                         setup.denoiser.schedule))[:, 0]


def drop_depth(d: np.ndarray, t: np.ndarray, *, t_min: int = 200) -> np.ndarray:
  """Per trajectory of d [S, B] on grid t [S]: min_k d_k / max_{j≤k} d_j over steps t_k ≥ t_min.

  1 = d never fell below its running peak; 0.5 = it fell to half of it. Steps below t_min are
  left out: there every d collapses as both posteriors reach the same x₀.
  """
  d = d[np.asarray(t) >= t_min]
  return (d / np.maximum.accumulate(d, axis=0)).min(axis=0)


def transition_from_sweep(copied: np.ndarray, steps: Sequence[int], num_steps: int) -> np.ndarray:
  """The transition step per sample from a sweep of static switches.

  copied [K, B] says whether switching w_post on at step steps[j] (ascending) ends in a copy.
  Returns, per sample, the first swept step whose switch no longer gives a copy (steps[0] if even
  the earliest does not; num_steps if every switch still copies).
  """
  no_copy = ~np.asarray(copied, bool)
  first = np.argmax(no_copy, axis=0)
  return np.where(no_copy.any(axis=0), np.asarray(steps)[first], num_steps)


def marginal_draw(density: ideal.GaussianDensity, schedule: NoiseSchedule, t: int, n: int,
                  rng: np.random.Generator) -> np.ndarray:
  """n draws of x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε with x₀ ~ density (a Gaussian), float32 [n, ...]."""
  mu, u = np.asarray(density.mean, np.float64), np.asarray(density.basis, np.float64)
  lam, rho = np.asarray(density.variances, np.float64), float(density.residual)
  z = rng.standard_normal((n, mu.size))
  zu = z @ u
  x0 = mu + (zu * np.sqrt(lam)) @ u.T + np.sqrt(rho) * (z - zu @ u.T)
  ab = float(schedule.alpha_bar[t])
  x_t = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * rng.standard_normal((n, mu.size))
  return x_t.reshape((n,) + density.shape).astype(np.float32)
