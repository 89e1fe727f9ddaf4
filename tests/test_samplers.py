"""Tests for minidiff.core.samplers against closed forms: ε oracles, Gaussian data, posteriors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance
from minidiff.core import registry
from minidiff.core import samplers
from minidiff.core.schedule import linear_schedule

SCHEDULE = linear_schedule(1000)
AB = np.asarray(SCHEDULE.alpha_bar, np.float64)  # ᾱ_t as the sampler sees it
SHAPE = (4, 4, 1)
NULL = 3  # class id of the null condition
# per-class means of a Gaussian "model" (classes 0, 1, 2 and the null condition)
MEANS = jnp.asarray(np.random.default_rng(0).uniform(-0.6, 0.6, size=(4,) + SHAPE), jnp.float32)


def gaussian_eps(x, t, mu, s):
  """ε* for data N(μ, s²I): √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ); s = 0 is a single training point."""
  ab = SCHEDULE.alpha_bar[t].reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.sqrt(1.0 - ab) * (x - jnp.sqrt(ab) * mu) / (ab * s**2 + 1.0 - ab)


def class_eps_apply(params, x, t, cond):
  """A class-conditional Gaussian model, s = 0.3 per class; params are the class means."""
  return gaussian_eps(x, t, params[cond], 0.3)


def class_eps(x, t, cond):
  return class_eps_apply(MEANS, x, t, cond)


def oscillating_eps(x, t, cond):
  """d_t = ‖ε_c − ε_u‖ oscillates in t with a class-dependent phase: minima at different steps."""
  phase = cond.astype(jnp.float32) * 1.3
  amp = jnp.where(cond == NULL, 0.0, 1.5 + jnp.cos(t / 60.0 + phase))
  return gaussian_eps(x, t, MEANS[NULL], 0.3) + 0.1 * amp[:, None, None, None]


def x_noise(batch, seed=0):
  """Initial noise x_T from numpy (keeps the tests from compiling an extra RNG kernel)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch,) + SHAPE), jnp.float32)


LABELS = jnp.asarray([0, 1, 2, 1], jnp.int32)
NULLS = jnp.full((4,), NULL, jnp.int32)


# --- the time grid --------------------------------------------------------------------------------


def test_time_grid_small_exact():
  np.testing.assert_array_equal(samplers.time_grid(10, 5, "uniform"), [8, 6, 4, 2, 0])
  np.testing.assert_array_equal(samplers.time_grid(10, 5, "trailing"), [9, 7, 5, 3, 1])
  np.testing.assert_array_equal(samplers.time_grid(10, 5, "linspace"), [9, 7, 4, 2, 0])  # 4.5 → 4
  assert samplers.time_grid(1000, 50)[0] == 980
  assert samplers.time_grid(1000, 50, "trailing")[0] == 999


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
def test_time_grid_properties(spacing):
  for n in (1, 3, 7, 49, 50, 333, 999):
    ts = samplers.time_grid(1000, n, spacing)
    assert ts.dtype == np.int32 and len(ts) == n and ts.min() >= 0 and ts.max() <= 999
    assert np.all(np.diff(ts) < 0)
  np.testing.assert_array_equal(samplers.time_grid(1000, 1000, spacing), np.arange(1000)[::-1])


@pytest.mark.parametrize("args", [(1000, 0), (1000, 1001), (1000, 2.5), (1000, 10, "log")])
def test_time_grid_errors(args):
  with pytest.raises(ValueError):
    samplers.time_grid(*args)


# --- single steps ---------------------------------------------------------------------------------


def test_ddim_eta1_step_is_the_ddpm_posterior():
  n, t, t_prev = 20000, 500, 480  # a strided step
  x_t = jnp.broadcast_to(jnp.asarray([[0.3], [-0.4]]).reshape(1, 2, 1, 1), (n, 2, 1, 1))
  eps = jnp.broadcast_to(jnp.asarray([0.5, -1.2]).reshape(1, 2, 1, 1), (n, 2, 1, 1))
  key = jax.random.key(3)
  x_ddim, x0_ddim = samplers.ddim_step(SCHEDULE, x_t, eps, t, t_prev, key, eta=1.0, clip_x0=False)
  x_ddpm, x0_ddpm = samplers.ddpm_step(SCHEDULE, x_t, eps, t, t_prev, key, clip_x0=False)
  np.testing.assert_allclose(x_ddim, x_ddpm, atol=2e-5)
  np.testing.assert_allclose(x0_ddim, x0_ddpm, atol=1e-6)
  ab, ab_prev = AB[t], AB[t_prev]
  beta = 1.0 - ab / ab_prev
  beta_tilde = (1.0 - ab_prev) / (1.0 - ab) * beta  # ≈ 0.0136 (Ho et al. eq. 7)
  x0 = (np.array([0.3, -0.4]) - np.sqrt(1.0 - ab) * np.array([0.5, -1.2])) / np.sqrt(ab)
  mu_tilde = (np.sqrt(ab_prev) * beta / (1.0 - ab) * x0
              + np.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab) * np.array([0.3, -0.4]))
  got = np.asarray(x_ddpm).reshape(n, 2)
  np.testing.assert_allclose(got.var(axis=0), [beta_tilde] * 2, rtol=0.05)
  np.testing.assert_allclose(got.mean(axis=0), mu_tilde, atol=4 * np.sqrt(beta_tilde / n))
  # η = 0.5: σ² = η² β̃
  x_half, _ = samplers.ddim_step(SCHEDULE, x_t, eps, t, t_prev, key, eta=0.5, clip_x0=False)
  np.testing.assert_allclose(np.asarray(x_half).reshape(n, 2).var(axis=0), [0.25 * beta_tilde] * 2,
                             rtol=0.05)


def test_steps_with_clipping_and_final_step():
  shape = (20000, 2, 1, 1)  # the shape of the test above: reuses its compiled noise kernel
  x_t = jnp.asarray(np.random.default_rng(1).normal(size=shape) * 2.0, jnp.float32)
  eps = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
  key = jax.random.key(0)
  # with clipping, DDIM η = 1 (ε re-derived from the clipped x̂₀) still equals the DDPM posterior
  a, x0_a = samplers.ddim_step(SCHEDULE, x_t, eps, 300, 250, key, eta=1.0)
  b, x0_b = samplers.ddpm_step(SCHEDULE, x_t, eps, 300, 250, key)
  assert float(jnp.abs(x0_a).max()) == 1.0  # something was clipped
  np.testing.assert_allclose(a, b, atol=2e-5)
  # the final step (t_prev = −1, ᾱ = 1) returns x̂₀ with no noise, for both samplers
  for step in (samplers.ddim_step, samplers.ddpm_step):
    x_prev, x0_hat = step(SCHEDULE, x_t, eps, 20, -1, key, eta=1.0, clip_x0=False)
    np.testing.assert_allclose(x_prev, x0_hat, atol=1e-6)
    np.testing.assert_allclose(x0_hat, SCHEDULE.eps_to_x0(x_t, 20, eps), atol=1e-6)


# --- whole samplers against closed forms ----------------------------------------------------------


@pytest.mark.parametrize("spacing, num_steps, clip_x0", [
    ("uniform", 50, False), ("trailing", 10, False), ("linspace", 100, False),
    ("uniform", 1, False), ("trailing", 20, True)])
def test_ddim_eta0_with_perfect_oracle_returns_the_training_point(spacing, num_steps, clip_x0):
  x_star = jnp.linspace(-0.9, 0.9, 16).reshape((1,) + SHAPE)
  eps_fn = lambda x, t, c: gaussian_eps(x, t, x_star, 0.0)  # noqa: E731
  x_0, diag = samplers.sample(eps_fn, SCHEDULE, x_noise(4), LABELS, NULLS, jax.random.key(1),
                              strategy="conditional", num_steps=num_steps, spacing=spacing,
                              clip_x0=clip_x0, x0_steps=(0, -1))
  np.testing.assert_allclose(x_0, jnp.broadcast_to(x_star, x_0.shape), atol=1e-5)
  assert diag.x0.shape == (2, 4) + SHAPE  # every x̂₀ along the way is x* too
  np.testing.assert_allclose(diag.x0, jnp.broadcast_to(x_star, diag.x0.shape), atol=1e-4)
  assert bool(jnp.all(jnp.isnan(diag.d_eps)))  # the null branch was skipped
  np.testing.assert_array_equal(diag.t, samplers.time_grid(1000, num_steps, spacing))


def linear_moments(grid, m, v, *, mu, s, eta):
  """Sample mean/variance after DDIM(η) with the Gaussian ε*, pushed through each linear step."""
  for t, t_prev in zip(grid, list(grid[1:]) + [-1]):
    ab, ab_prev = AB[t], (AB[t_prev] if t_prev >= 0 else 1.0)
    c = np.sqrt(1.0 - ab) / (ab * s**2 + 1.0 - ab)  # ε* = c (x − √ᾱ μ)
    a0 = (1.0 - np.sqrt(1.0 - ab) * c) / np.sqrt(ab)  # x̂₀ = a0 x + b0
    b0 = np.sqrt(1.0 - ab) * c * mu
    sig2 = eta**2 * (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)  # σ_t(η)² (Song eq. 16)
    k = np.sqrt(max(1.0 - ab_prev - sig2, 0.0))
    slope = np.sqrt(ab_prev) * a0 + k * c  # x_prev = √ᾱ_prev x̂₀ + k ε* + σ z
    m = slope * m + np.sqrt(ab_prev) * b0 - k * c * np.sqrt(ab) * mu
    v = slope**2 * v + sig2
  return m, v


@pytest.mark.parametrize("sampler, num_steps, spacing", [("ddim", 100, "trailing"),
                                                         ("ddpm", 1000, "uniform")])
def test_gaussian_data_moments(sampler, num_steps, spacing):
  mu, s, n = 0.3, 0.5, 2000
  x_T = x_noise(n, seed=5)
  x_0, _ = samplers.sample(lambda x, t, c: gaussian_eps(x, t, mu, s), SCHEDULE, x_T,
                           jnp.zeros((n,)), None, jax.random.key(2), strategy="conditional",
                           sampler=sampler, num_steps=num_steps, spacing=spacing, clip_x0=False)
  x_0 = np.asarray(x_0, np.float64)
  # the data distribution: mean within 0.01 of μ = 0.3, std within 0.02 of s = 0.5 (32,000 values;
  # DDIM-100's ODE discretisation leaves std ≈ 0.487, DDPM-1000 ≈ 0.497)
  assert abs(x_0.mean() - mu) < 0.01 and abs(x_0.std() - s) < 0.02
  # the sampler's own closed form: each step is linear in x for Gaussian data, so the moments of
  # this x_T propagate exactly (DDIM η = 0) or up to the sampling error of the added noise (DDPM)
  x_T = np.asarray(x_T, np.float64)
  grid = samplers.time_grid(1000, num_steps, spacing)
  m, v = linear_moments(grid, x_T.mean(), x_T.var(), mu=mu, s=s,
                        eta=1.0 if sampler == "ddpm" else 0.0)
  tol_m, tol_s = (1e-4, 1e-4) if sampler == "ddim" else (4 * s / np.sqrt(x_0.size), 0.015 * s)
  assert abs(x_0.mean() - m) < tol_m and abs(x_0.std() - np.sqrt(v)) < tol_s


# --- guidance inside the sampler ------------------------------------------------------------------


def test_cfg_endpoints_and_diagnostics():
  x_T, key = x_noise(4), jax.random.key(4)
  run = lambda strategy, **kw: samplers.sample(  # noqa: E731
      class_eps, SCHEDULE, x_T, LABELS, NULLS, key, strategy=strategy, num_steps=20, **kw)
  x_cond, d_cond = run("conditional")
  x_w1, d_w1 = run(registry.make_rule("cfg", w=1.0), compute_d=True)  # one 2B pass per step
  np.testing.assert_allclose(x_w1, x_cond, atol=1e-5)
  x_none, d_none = run("none")
  x_w0, _ = run(registry.make_rule("cfg", w=0.0), compute_d=True)
  np.testing.assert_allclose(x_w0, x_none, atol=1e-5)
  assert bool(jnp.all(jnp.isnan(d_cond.d_eps))) and bool(jnp.all(jnp.isnan(d_none.d_x0)))
  np.testing.assert_array_equal(d_cond.w, 1.0)
  np.testing.assert_array_equal(d_none.w, 0.0)
  np.testing.assert_array_equal(d_cond.transition_step, -1)
  # d at step 0, by hand: both branches at (x_T, t_0)
  t0 = jnp.full((4,), int(d_w1.t[0]), jnp.int32)
  eps_c, eps_u = class_eps(x_T, t0, LABELS), class_eps(x_T, t0, NULLS)
  d_eps = jnp.sqrt(jnp.sum((eps_c - eps_u) ** 2, axis=(1, 2, 3)))
  x0_c, x0_u = SCHEDULE.eps_to_x0(x_T, t0, eps_c), SCHEDULE.eps_to_x0(x_T, t0, eps_u)
  d_x0 = jnp.sqrt(jnp.sum((x0_c - x0_u) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(d_w1.d_eps[0], d_eps, rtol=1e-4)
  np.testing.assert_allclose(d_w1.d_x0[0], d_x0, rtol=1e-3)
  assert float(jnp.abs(x_none - x_cond).max()) > 1e-2  # the condition matters


def test_static_transition_inside_the_sampler():
  strategy = registry.make_rule("static", w_pre=0.0, tau=505, w_post=3.0)
  for spacing, k in (("uniform", 24), ("trailing", 25)):  # t_24 = 500; t_25 = 999 − 500 = 499
    _, diag = samplers.sample(class_eps, SCHEDULE, x_noise(4), LABELS, NULLS, jax.random.key(0),
                              strategy=strategy, num_steps=50, spacing=spacing)
    np.testing.assert_array_equal(diag.transition_step, [k] * 4)
    np.testing.assert_array_equal(diag.w[:k], 0.0)
    np.testing.assert_array_equal(diag.w[k:], 3.0)


STRATEGY_CASES = {
    "ddim_eta0_cfg": ("ddim", 0.0, registry.make_rule("cfg", w=3.0)),
    "ddim_eta05_cfg": ("ddim", 0.5, registry.make_rule("cfg", w=3.0)),
    "ddim_dynamic": ("ddim", 0.0, registry.make_rule("dynamic")),
}


def assert_same_run(run_a, run_b):
  (x_a, d_a), (x_b, d_b) = run_a, run_b
  np.testing.assert_allclose(x_a, x_b, atol=1e-5)
  for a, b in zip(jax.tree.leaves(d_a), jax.tree.leaves(d_b)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)  # x̂₀ at t ≈ T is (x_t − …)/√ᾱ: looser


@pytest.mark.parametrize("case", list(STRATEGY_CASES))
def test_scan_equals_reference_loop(case):
  sampler, eta, strategy = STRATEGY_CASES[case]
  eps_fn = oscillating_eps if case == "ddim_dynamic" else class_eps
  args = (eps_fn, SCHEDULE, x_noise(4), LABELS, NULLS, jax.random.key(7))
  kw = dict(strategy=strategy, sampler=sampler, eta=eta, num_steps=20, x0_steps=(0, 7, -1))
  x_scan, d_scan = samplers.sample(*args, **kw)
  assert_same_run((x_scan, d_scan), samplers.sample_reference(*args, **kw))
  assert d_scan.x0.shape == (3, 4) + SHAPE
  if case == "ddim_dynamic":
    d = np.asarray(d_scan.d_eps)  # the rule, by hand, on the recorded d: first strict local minimum
    expected = [next((k for k in range(2, 20) if d[k - 2, b] > d[k - 1, b] < d[k, b]), -1)
                for b in range(4)]
    np.testing.assert_array_equal(d_scan.transition_step, expected)
    assert len(set(expected)) >= 2 and min(expected) >= 2  # per-sample transitions
    for b, k in enumerate(expected):
      np.testing.assert_array_equal(d_scan.w[:, b], np.where(np.arange(20) >= k, 7.5, 1.0))


def test_make_sampler_ddpm_keys_params_and_reference():
  traces = []

  def eps_apply(params, x, t, cond):
    traces.append(1)
    return class_eps_apply(params, x, t, cond)

  strategy = registry.make_rule("opposite", tau=600)
  kw = dict(strategy=strategy, sampler="ddpm", num_steps=20, x0_steps=(0, 7, -1))
  run = samplers.make_sampler(eps_apply, schedule=SCHEDULE, **kw)
  x_T = x_noise(4)
  a = run(MEANS, x_T, LABELS, NULLS, jax.random.key(0))
  b = run(MEANS, x_T, LABELS, NULLS, jax.random.key(0))
  c = run(MEANS, x_T, LABELS, NULLS, jax.random.key(1))
  d = run(MEANS + 0.1, x_T, LABELS, NULLS, jax.random.key(0))
  assert len(traces) == 1  # one trace (one 2B call in the scan body) for all four calls
  np.testing.assert_array_equal(a[0], b[0])  # same key → identical samples
  assert float(jnp.mean(a[0] != c[0])) > 0.5  # different keys → different samples (some clip)
  assert float(jnp.abs(a[0] - d[0]).max()) > 1e-2  # params are an argument, not a baked constant
  # t_k = 950 − 50k: the first t ≤ 600 is 600 at k = 7
  np.testing.assert_array_equal(a[1].transition_step, [7] * 4)
  ref = samplers.sample_reference(class_eps, SCHEDULE, x_T, LABELS, NULLS, jax.random.key(0),
                                  **kw)
  assert_same_run(a, ref)


@pytest.mark.parametrize("overrides", [
    {"sampler": "euler"}, {"spacing": "log"}, {"eta": 1.5}, {"eta": -0.1}, {"num_steps": 0},
    {"num_steps": 1001}, {"strategy": "cfgg"},
    {"strategy": registry.make_rule("static", tau=1000)},
    {"x0_steps": (50,)}, {"x0_steps": (-51,)}])
def test_validation_raises_before_compile(overrides):
  def eps_fn(x, t, c):
    raise AssertionError("the model must not be traced before validation")

  kw = dict(strategy="cfg", num_steps=50) | overrides
  with pytest.raises(ValueError):
    samplers.sample(eps_fn, SCHEDULE, x_noise(2), LABELS[:2], NULLS[:2], jax.random.key(0), **kw)
  with pytest.raises(ValueError):
    samplers.make_sampler(lambda p, x, t, c: eps_fn(x, t, c), schedule=SCHEDULE, **kw)


def test_missing_null_condition_raises():
  with pytest.raises(ValueError, match="null_cond"):
    samplers.sample(class_eps, SCHEDULE, x_noise(2), LABELS[:2], None, jax.random.key(0),
                    strategy="cfg")
