"""Tests for minidiff.theory.ideal against float64 numpy brute force and Gaussian closed forms."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance
from minidiff.core import registry
from minidiff.theory import ideal
from minidiff.core import samplers
from minidiff.core.schedule import linear_schedule

SCHEDULE = linear_schedule(1000)
AB = np.asarray(SCHEDULE.alpha_bar, np.float64)  # ᾱ_t exactly as the denoisers read it
SHAPE = (2, 3, 1)  # D = 6
D = 6


def rng(seed):
  return np.random.default_rng(seed)


def brute_empirical(x, t, points, weights):
  """E[x₀|x_t], log p_t(x_t) for Σ π_i δ(x − x_i), written plainly in float64."""
  ab = AB[t]
  x = x.reshape(len(x), -1).astype(np.float64)
  p = points.reshape(len(points), -1).astype(np.float64)
  sq = ((x[:, None, :] - np.sqrt(ab) * p[None]) ** 2).sum(-1)  # ‖x_t − √ᾱ x_i‖²
  logits = np.log(weights / weights.sum()) - sq / (2 * (1 - ab))
  top = logits.max(1, keepdims=True)
  post = np.exp(logits - top)
  log_p = top[:, 0] + np.log(post.sum(1)) - 0.5 * x.shape[1] * np.log(2 * np.pi * (1 - ab))
  return (post / post.sum(1, keepdims=True)) @ p, log_p


def gaussian_logpdf(x, mean, cov):
  diff = x - mean
  _, logdet = np.linalg.slogdet(cov)
  return -0.5 * (np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff) + logdet
                 + len(mean) * np.log(2 * np.pi))


@pytest.mark.parametrize("t", [0, 20, 300, 700, 999])
def test_empirical_equals_brute_force(t):
  points = rng(0).uniform(-1, 1, (7,) + SHAPE).astype(np.float32)
  weights = np.array([1, 2, 3, 1, 1, 5, 0.5])
  dens = ideal.EmpiricalDensity.from_images(points, weights)
  # x_t near the data: x_t = √ᾱ x_j + √(1−ᾱ) ε for random j, so the softmax is not one-hot
  j = rng(1).integers(0, 7, 5)
  x = (np.sqrt(AB[t]) * points[j] + np.sqrt(1 - AB[t]) * rng(2).normal(size=(5,) + SHAPE))
  x = x.astype(np.float32)
  mean, log_p = brute_empirical(x, t, points, weights)
  np.testing.assert_allclose(dens.posterior_mean(jnp.asarray(x), t, SCHEDULE).reshape(5, -1), mean,
                             atol=2e-4)
  np.testing.assert_allclose(dens.log_marginal(jnp.asarray(x), t, SCHEDULE), log_p, rtol=1e-4,
                             atol=2e-3)
  eps = (x.reshape(5, -1) - np.sqrt(AB[t]) * mean) / np.sqrt(1 - AB[t])  # ε* from E[x₀|x_t]
  np.testing.assert_allclose(dens.eps(jnp.asarray(x), t, SCHEDULE).reshape(5, -1), eps,
                             atol=2e-3 if t == 0 else 2e-4)


def test_single_point_and_atom():
  # one training point: E[x₀|x_t] = x₁, so ε* = (x_t − √ᾱ x₁)/√(1−ᾱ) for every x_t and t
  point = rng(3).uniform(-1, 1, SHAPE).astype(np.float32)
  x = jnp.asarray(rng(4).normal(size=(4,) + SHAPE), jnp.float32)
  t = jnp.asarray([0, 10, 500, 999], jnp.int32)
  ab = AB[np.asarray(t)].reshape(4, 1, 1, 1)
  expect = (np.asarray(x) - np.sqrt(ab) * point) / np.sqrt(1 - ab)
  for dens in (ideal.EmpiricalDensity.from_images(point[None]), ideal.GaussianDensity.atom(point)):
    np.testing.assert_allclose(dens.eps(x, t, SCHEDULE), expect, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dens.posterior_mean(x, t, SCHEDULE), np.broadcast_to(point, x.shape),
                               atol=1e-6)


def test_gaussian_fit_and_closed_form():
  data = rng(5).normal(size=(400, D)) @ rng(6).normal(size=(D, D)) * 0.3 + 0.2
  g = ideal.GaussianDensity.fit(data.reshape((400,) + SHAPE))
  cov = np.cov(data, rowvar=False, bias=True)
  np.testing.assert_allclose(g.covariance(), cov, atol=1e-5)
  np.testing.assert_allclose(g.mean, data.mean(0), atol=1e-6)
  x = rng(7).normal(size=(5, D)).astype(np.float32)
  for t in (0, 250, 999):
    ab = AB[t]
    s = ab * cov + (1 - ab) * np.eye(D)  # Cov(x_t) = ᾱΣ + (1−ᾱ)I
    # ε* = √(1−ᾱ) (ᾱΣ + (1−ᾱ)I)⁻¹ (x_t − √ᾱ μ)
    eps = np.sqrt(1 - ab) * (x - np.sqrt(ab) * data.mean(0)) @ np.linalg.inv(s)
    xs = jnp.asarray(x.reshape((5,) + SHAPE))
    np.testing.assert_allclose(g.eps(xs, t, SCHEDULE).reshape(5, D), eps, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(g.log_marginal(xs, t, SCHEDULE),
                               gaussian_logpdf(x, np.sqrt(ab) * data.mean(0), s), rtol=1e-4)


def test_low_rank_gaussian_keeps_total_variance_and_matches_dense():
  data = rng(8).normal(size=(300, D)) * np.array([2.0, 1.0, 0.5, 0.1, 0.1, 0.1])
  g = ideal.GaussianDensity.fit(data.reshape((300,) + SHAPE), rank=2)
  cov = np.asarray(g.covariance(), np.float64)  # U diag(λ) Uᵀ + ρ (I − UUᵀ)
  np.testing.assert_allclose(np.trace(cov), np.trace(np.cov(data, rowvar=False, bias=True)),
                             rtol=1e-5)
  x = rng(9).normal(size=(4, D)).astype(np.float32)
  ab = AB[400]
  s = ab * cov + (1 - ab) * np.eye(D)
  mean = g.mean + np.sqrt(ab) * (x - np.sqrt(ab) * g.mean) @ np.linalg.inv(s) @ cov
  xs = jnp.asarray(x.reshape((4,) + SHAPE))
  np.testing.assert_allclose(g.posterior_mean(xs, 400, SCHEDULE).reshape(4, D), mean, atol=1e-4)
  np.testing.assert_allclose(g.log_marginal(xs, 400, SCHEDULE),
                             gaussian_logpdf(x, np.sqrt(ab) * np.asarray(g.mean), s), rtol=1e-4)


def test_mixture_responsibilities_and_posterior_mean():
  a = rng(10).uniform(-1, 1, SHAPE).astype(np.float32)
  data = rng(11).normal(size=(200, D)) * 0.4
  gauss = ideal.GaussianDensity.fit(data.reshape((200,) + SHAPE))
  mix = ideal.MixtureDensity.of([ideal.GaussianDensity.atom(a), gauss], [0.3, 0.7])
  x = rng(12).normal(size=(6, D)).astype(np.float32)
  xs = jnp.asarray(x.reshape((6,) + SHAPE))
  t = 600
  ab = AB[t]
  cov = np.asarray(gauss.covariance(), np.float64)
  # r_k ∝ π_k N(x_t; √ᾱ μ_k, ᾱΣ_k + (1−ᾱ)I), the atom has Σ = 0
  logs = np.stack([
      np.log(0.3) + gaussian_logpdf(x, np.sqrt(ab) * a.reshape(-1), (1 - ab) * np.eye(D)),
      np.log(0.7) + gaussian_logpdf(x, np.sqrt(ab) * np.asarray(gauss.mean),
                                    ab * cov + (1 - ab) * np.eye(D))], axis=1)
  resp = np.exp(logs - logs.max(1, keepdims=True))
  resp /= resp.sum(1, keepdims=True)
  np.testing.assert_allclose(mix.responsibilities(xs, t, SCHEDULE), resp, atol=1e-5)
  means = np.stack([np.broadcast_to(a.reshape(-1), (6, D)),
                    np.asarray(gauss.posterior_mean(xs, t, SCHEDULE)).reshape(6, D)], axis=1)
  np.testing.assert_allclose(mix.posterior_mean(xs, t, SCHEDULE).reshape(6, D),
                             np.einsum("bk,bkd->bd", resp, means), atol=1e-5)
  np.testing.assert_allclose(mix.log_marginal(xs, t, SCHEDULE),
                             np.logaddexp(logs[:, 0], logs[:, 1]), rtol=1e-5)


def test_mixture_of_atoms_is_the_empirical_density():
  points = rng(13).uniform(-1, 1, (4,) + SHAPE).astype(np.float32)
  w = [1.0, 3.0, 2.0, 2.0]
  mix = ideal.MixtureDensity.of([ideal.GaussianDensity.atom(p) for p in points], w)
  emp = ideal.EmpiricalDensity.from_images(points, np.asarray(w))
  x = jnp.asarray(rng(14).normal(size=(5,) + SHAPE) * 0.5, jnp.float32)
  for t in (50, 500):
    np.testing.assert_allclose(mix.posterior_mean(x, t, SCHEDULE),
                               emp.posterior_mean(x, t, SCHEDULE), atol=1e-5)
    np.testing.assert_allclose(mix.log_marginal(x, t, SCHEDULE), emp.log_marginal(x, t, SCHEDULE),
                               rtol=1e-5)


def test_stable_at_tiny_t_far_points_and_a_big_training_set():
  points = rng(15).uniform(-1, 1, (20000, 8, 8, 1)).astype(np.float32)
  dens = ideal.EmpiricalDensity.from_images(points)
  mix = ideal.MixtureDensity.of([dens, ideal.GaussianDensity.fit(points[:500])], [0.5, 0.5])
  # on a training point, between two, and far outside the data (|x| = 50)
  x = np.stack([points[3], 0.5 * (points[4] + points[5]), np.full((8, 8, 1), 50.0, np.float32)])
  for t in (0, 1, 999):
    for d in (dens, mix):
      for out in (d.eps(jnp.asarray(x), t, SCHEDULE), d.log_marginal(jnp.asarray(x), t, SCHEDULE)):
        assert np.all(np.isfinite(np.asarray(out))), (t, type(d).__name__)
  # at t = 0 (1 − ᾱ = 1e−4) the posterior mean is the nearest training image
  np.testing.assert_allclose(dens.posterior_mean(jnp.asarray(x[:1]), 0, SCHEDULE)[0], points[3],
                             atol=1e-5)
  # and the brute force agrees on the big set at a moderate t
  mean, log_p = brute_empirical(x[:2], 200, points, np.ones(20000))
  np.testing.assert_allclose(dens.posterior_mean(jnp.asarray(x[:2]), 200, SCHEDULE).reshape(2, -1),
                             mean, atol=1e-3)
  np.testing.assert_allclose(dens.log_marginal(jnp.asarray(x[:2]), 200, SCHEDULE), log_p, rtol=1e-4)


def test_denoiser_picks_density_per_sample_and_rejects_bad_ids():
  pts = rng(16).uniform(-1, 1, (3,) + SHAPE).astype(np.float32)
  atoms = [ideal.GaussianDensity.atom(p) for p in pts]
  conds, null = {0: atoms[0], 4: atoms[1]}, atoms[2]
  eps_fn = ideal.make_eps_fn(conds, null, SCHEDULE, null_id=9)
  x = jnp.asarray(rng(17).normal(size=(4,) + SHAPE), jnp.float32)
  t = jnp.asarray([5, 100, 400, 900], jnp.int32)
  cond = jnp.asarray([4, 9, 0, 7], jnp.int32)  # 7 is no condition: NaN, not a silent null
  out = np.asarray(eps_fn(x, t, cond))
  for b, dens in enumerate([atoms[1], null, atoms[0]]):
    np.testing.assert_allclose(out[b], dens.eps(x[b:b + 1], t[b:b + 1], SCHEDULE)[0], atol=1e-5)
  assert np.all(np.isnan(out[3]))
  den = ideal.IdealDenoiser.build(conds, null, SCHEDULE, null_id=9)
  np.testing.assert_allclose(jax.jit(ideal.eps_apply)(den, x, t, cond)[:3], out[:3], atol=1e-6)
  with pytest.raises(ValueError, match="null_id"):
    ideal.IdealDenoiser.build(conds, null, SCHEDULE, null_id=4)


@pytest.mark.parametrize("w", [1.0, 2.5])
def test_guided_ddim_on_two_atoms_lands_on_the_extrapolated_point(w):
  # Atoms a (condition) and b (null): x̂₀_c = a, x̂₀_u = b at every step, so with η = 0 and no clip
  # each DDIM step predicts x̂₀ = b + w (a − b) and the sample ends exactly there (w = 1: a itself).
  a, b = rng(18).uniform(-0.5, 0.5, (2,) + SHAPE).astype(np.float32)
  eps_fn = ideal.make_eps_fn({0: ideal.GaussianDensity.atom(a)}, ideal.GaussianDensity.atom(b),
                             SCHEDULE, null_id=1)
  x_T = jnp.asarray(rng(19).normal(size=(3,) + SHAPE), jnp.float32)  # noqa: N806
  x0, _ = samplers.sample(eps_fn, SCHEDULE, x_T, jnp.zeros(3, jnp.int32), jnp.ones(3, jnp.int32),
                          jax.random.key(0), strategy=registry.make_rule("cfg", w=w),
                          num_steps=10, clip_x0=False)
  np.testing.assert_allclose(x0, np.broadcast_to(b + w * (a - b), x0.shape), atol=1e-4)
