import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core.schedule import cosine_schedule, linear_schedule, make_schedule


def test_linear_alpha_bar_closed_form():
  s = linear_schedule(1000)
  # β_0 = 1e-4 → ᾱ_0 = 0.9999; β_999 = 0.02.
  np.testing.assert_allclose(s.alpha_bar[0], 0.9999, rtol=1e-7)
  np.testing.assert_allclose(s.betas[-1], 0.02, rtol=1e-6)
  # ᾱ_1 = (1 − 1e-4)(1 − β_1), β_1 = 1e-4 + (0.02 − 1e-4)/999.
  b1 = 1e-4 + (0.02 - 1e-4) / 999
  np.testing.assert_allclose(s.alpha_bar[1], (1 - 1e-4) * (1 - b1), rtol=1e-6)
  # ᾱ_999 = Π(1 − β) ≈ 4.04e-5 for Ho et al.'s schedule: nearly pure noise.
  np.testing.assert_allclose(s.alpha_bar[-1], np.prod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-4)
  assert 3e-5 < float(s.alpha_bar[-1]) < 5e-5
  assert np.all(np.diff(np.asarray(s.alpha_bar)) < 0)


def test_cosine_alpha_bar_closed_form():
  s = cosine_schedule(1000)
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
  for t in (0, 250, 500, 750):
    np.testing.assert_allclose(s.alpha_bar[t], f(t + 1) / f(0), rtol=1e-5)
  assert s.T == 1000


def test_q_sample_mean_and_variance():
  s = linear_schedule(1000)
  x0 = jnp.full((20000, 1), 0.7)
  t = jnp.full((20000,), 300)
  eps = jax.random.normal(jax.random.key(0), x0.shape)
  x_t = np.asarray(s.q_sample(x0, t, eps))
  ab = float(s.alpha_bar[300])
  # E[x_t] = √ᾱ x₀, Var[x_t] = 1 − ᾱ.
  np.testing.assert_allclose(x_t.mean(), np.sqrt(ab) * 0.7, atol=0.02)
  np.testing.assert_allclose(x_t.var(), 1 - ab, rtol=0.03)


def test_eps_x0_round_trip_and_sigma():
  s = linear_schedule(1000)
  k1, k2 = jax.random.split(jax.random.key(1))
  x0 = jax.random.uniform(k1, (4, 3, 3, 1), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  t = jnp.array([0, 10, 500, 999])
  x_t = s.q_sample(x0, t, eps)
  np.testing.assert_allclose(s.eps_to_x0(x_t, t, eps), x0, atol=2e-3)
  np.testing.assert_allclose(s.x0_to_eps(x_t, t, x0), eps, atol=1e-4)
  ab = np.asarray(s.alpha_bar)[[10, 500]]
  np.testing.assert_allclose(s.sigma(jnp.array([10, 500])), np.sqrt((1 - ab) / ab), rtol=1e-6)


def test_schedule_is_a_pytree_usable_under_jit():
  s = make_schedule("cosine", 50)
  out = jax.jit(lambda sch, t: sch.alpha_bar[t])(s, 3)
  np.testing.assert_allclose(out, s.alpha_bar[3])
  with pytest.raises(ValueError, match="Unknown noise schedule"):
    make_schedule("sigmoid")
