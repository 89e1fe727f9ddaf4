"""DPM-Solver++(2M) (Lu et al. 2022) on the stepper interface: float64 reference, 1st order = DDIM."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance, samplers
from minidiff.core.schedule import linear_schedule

SCHEDULE = linear_schedule(1000)
AB = np.asarray(SCHEDULE.alpha_bar, np.float64)
SHAPE = (4, 4, 1)
MU, S_DATA = 0.3, 0.5  # Gaussian data N(μ, s²I)


def gaussian_eps(x, t, mu=MU, s=S_DATA):
  """ε* for data N(μ, s²I): √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)."""
  ab = SCHEDULE.alpha_bar[t].reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.sqrt(1.0 - ab) * (x - jnp.sqrt(ab) * mu) / (ab * s**2 + 1.0 - ab)


def x_noise(batch, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch,) + SHAPE), jnp.float32)


def dpmpp_2m_float64(x, grid):
  """DPM-Solver++(2M), written out in float64 on the Gaussian ε* (Lu et al. 2022, Algorithm 2)."""
  x = np.asarray(x, np.float64)
  lam = lambda ab: 0.5 * np.log(ab / (1.0 - ab))  # noqa: E731  λ = log(α/σ)
  x0_prev, h_prev = None, None
  for i, t in enumerate(grid):
    ab = AB[t]
    eps = np.sqrt(1.0 - ab) * (x - np.sqrt(ab) * MU) / (ab * S_DATA**2 + 1.0 - ab)
    x0 = (x - np.sqrt(1.0 - ab) * eps) / np.sqrt(ab)
    if i == len(grid) - 1:
      return x0  # last step to ᾱ = 1: first order, x = x̂₀
    ab_n = AB[grid[i + 1]]
    h = lam(ab_n) - lam(ab)
    if x0_prev is None:
      d = x0
    else:
      r = h_prev / h
      d = (1.0 + 1.0 / (2.0 * r)) * x0 - 1.0 / (2.0 * r) * x0_prev
    sig, sig_n, alpha_n = np.sqrt(1.0 - ab), np.sqrt(1.0 - ab_n), np.sqrt(ab_n)
    x = sig_n / sig * x - alpha_n * (np.exp(-h) - 1.0) * d
    x0_prev, h_prev = x0, h


def run(sampler, x_T, *, num_steps, spacing="uniform", clip_x0=False):  # noqa: N803
  x0, _ = samplers.sample(lambda x, t, c: gaussian_eps(x, t), SCHEDULE, x_T,
                          jnp.zeros((x_T.shape[0],)), None, jax.random.key(0),
                          strategy="conditional", sampler=sampler, num_steps=num_steps,
                          spacing=spacing, clip_x0=clip_x0)
  return np.asarray(x0, np.float64)


@pytest.mark.parametrize("num_steps, spacing", [(50, "uniform"), (10, "trailing")])
def test_dpmpp_2m_matches_a_float64_reference(num_steps, spacing):
  x_T = x_noise(8)  # noqa: N806
  got = run("dpmpp_2m", x_T, num_steps=num_steps, spacing=spacing)
  ref = dpmpp_2m_float64(x_T, samplers.time_grid(1000, num_steps, spacing))
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


def test_second_order_is_closer_to_the_exact_ode_solution_than_ddim():
  # Gaussian data: the probability-flow ODE from x_{t0} ends at
  # μ + s (x_{t0} − √ᾱ_{t0} μ)/√(ᾱ_{t0} s² + 1 − ᾱ_{t0})  (each marginal is Gaussian, the map linear).
  # On the trailing grid (float64, this noise): DDIM's error halves per doubling of the steps
  # (0.43, 0.23, 0.12 at 10, 20, 40: first order), 2M's falls faster (0.32, 0.072, 0.0029).
  # (On the leading "uniform" grid, whose λ steps are very uneven near t = T, 2M is no better
  # than DDIM until ~80 steps: 0.13 vs 0.11 at 40.)
  x_T = x_noise(8, seed=3)  # noqa: N806
  grid = samplers.time_grid(1000, 40, "trailing")
  ab0 = AB[grid[0]]
  exact = MU + S_DATA * (np.asarray(x_T, np.float64) - np.sqrt(ab0) * MU) / np.sqrt(
      ab0 * S_DATA**2 + 1.0 - ab0)
  err_ddim = np.abs(run("ddim", x_T, num_steps=40, spacing="trailing") - exact).max()
  err_2m = np.abs(run("dpmpp_2m", x_T, num_steps=40, spacing="trailing") - exact).max()
  assert err_2m < 0.1 * err_ddim, (err_2m, err_ddim)


@pytest.mark.parametrize("clip_x0", [False, True])
def test_first_order_equals_ddim(clip_x0):
  x_T = x_noise(8, seed=1) * 1.5  # noqa: N806  (some x̂₀ leave [−1, 1] when clipping)
  first = run(samplers.DPMSolverPP(order=1), x_T, num_steps=20, clip_x0=clip_x0)
  ddim = run("ddim", x_T, num_steps=20, clip_x0=clip_x0)
  np.testing.assert_allclose(first, ddim, atol=2e-5)


def class_eps(x, t, cond):
  means = jnp.asarray([-0.4, 0.2, 0.5, 0.0])[cond].reshape((-1, 1, 1, 1))  # class 3 = null
  return gaussian_eps(x, t, means, 0.3)


def test_solver_state_is_carried_through_guidance_and_the_switch_family():
  x_T, key = x_noise(3, seed=2), jax.random.key(0)  # noqa: N806
  cond, null = jnp.asarray([0, 1, 2]), jnp.full((3,), 3)
  kw = dict(sampler="dpmpp_2m", num_steps=12)
  strategy = guidance.StaticTransition(w_pre=-2.0, tau=500, w_post=4.0)
  x_scan, d_scan = samplers.sample(class_eps, SCHEDULE, x_T, cond, null, key, strategy=strategy, **kw)
  x_ref, _ = samplers.sample_reference(class_eps, SCHEDULE, x_T, cond, null, key, strategy=strategy,
                                       **kw)
  np.testing.assert_allclose(x_scan, x_ref, atol=1e-5)
  grid = samplers.time_grid(1000, 12)
  steps = [0, samplers.switch_step(grid, 500), 12]
  x_fam, _ = samplers.sample_switch_family(class_eps, SCHEDULE, x_T, cond, null, key, w_pre=-2.0,
                                           w_post=4.0, switch_steps=jnp.asarray(steps), **kw)
  np.testing.assert_allclose(x_fam[1], x_scan, atol=1e-5)  # the multistep state crosses the switch
  alone = lambda w: samplers.sample(class_eps, SCHEDULE, x_T, cond, null, key,  # noqa: E731
                                    strategy=guidance.Constant(w=w), **kw)[0]
  np.testing.assert_allclose(x_fam[0], alone(4.0), atol=1e-5)
  np.testing.assert_allclose(x_fam[2], alone(-2.0), atol=1e-5)


def test_bad_order_and_unknown_sampler_raise():
  with pytest.raises(ValueError, match="order"):
    samplers.DPMSolverPP(order=3)
  with pytest.raises(ValueError, match="Unknown sampler"):
    samplers.make_stepper("dpmpp_3m")
