"""Static-transition arms sampled from one shared prefix equal the same arms sampled one by one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance, samplers
from minidiff.core.schedule import make_schedule


def _eps_fn(x_t, t, cond):
  # A cheap smooth denoiser whose conditional and null branches differ (cond 0 = null).
  c = cond.astype(jnp.float32)[:, None, None, None]
  return 0.6 * jnp.tanh(x_t) + 0.3 * c * jnp.sin(t.astype(jnp.float32)[:, None, None, None] / 97.0)


@pytest.mark.parametrize("w_pre,sampler,eta", [(0.0, "ddim", 0.0), (-2.0, "ddim", 0.5),
                                               (0.0, "ddpm", 1.0)])
def test_family_equals_each_static_arm_alone(w_pre, sampler, eta):
  schedule = make_schedule("linear", 100)
  x_T = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))  # noqa: N806
  cond, null = jnp.array([1, 2, 3]), jnp.zeros(3, jnp.int32)
  key = jax.random.key(1)
  taus = [95, 60, 33, 0]  # the first switches at step 0 (t_0 = 90 ≤ 95), the last at the final step
  grid = samplers.time_grid(100, 10, "uniform")
  steps = [samplers.switch_step(grid, tau) for tau in taus]
  assert steps == [0, 3, 6, 9]  # grid 90, 80, …, 0: first t_k ≤ τ
  x0, diag = jax.jit(lambda x: samplers.sample_switch_family(
      _eps_fn, schedule, x, cond, null, key, w_pre=w_pre, w_post=5.0,
      switch_steps=jnp.asarray(steps), sampler=sampler, num_steps=10, eta=eta))(x_T)
  for a, tau in enumerate(taus):
    strategy = guidance.StaticTransition(w_pre=w_pre, tau=tau, w_post=5.0)
    ref, ref_diag = samplers.sample(_eps_fn, schedule, x_T, cond, null, key, strategy=strategy,
                                    sampler=sampler, num_steps=10, eta=eta)
    np.testing.assert_allclose(x0[a], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(diag.w[a], ref_diag.w)  # w_pre before k_a, w_post from it
    np.testing.assert_array_equal(diag.transition_step[a], ref_diag.transition_step)
    # d_t from the switch on (both branches there) matches the arm run alone.
    np.testing.assert_allclose(diag.d_eps[a][steps[a]:], ref_diag.d_eps[steps[a]:], rtol=1e-5)


def test_switch_step_is_the_first_grid_step_at_or_below_tau():
  grid = np.array([90, 80, 70, 0])
  assert samplers.switch_step(grid, 999) == 0
  assert samplers.switch_step(grid, 80) == 1
  assert samplers.switch_step(grid, 79) == 2
  assert samplers.switch_step(grid, 0) == 3
