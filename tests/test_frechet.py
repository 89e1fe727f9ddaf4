"""Tests for minidiff.metrics.frechet: zero on identical sets, monotone in noise, Gaussian closed forms."""
import numpy as np
import pytest

from minidiff.metrics import frechet


def test_identical_sets_give_zero():
  features = np.random.default_rng(0).normal(size=(500, 16)) @ np.diag(np.linspace(0.1, 3, 16))
  assert frechet.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_singular_covariance_identical_sets():
  # Fewer samples than dimensions: the covariance is rank-deficient, the distance still ≈ 0.
  features = np.random.default_rng(1).normal(size=(10, 64))
  assert frechet.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_grows_monotonically_with_noise():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2000, 8))
  noise = rng.normal(size=features.shape)
  scales = (0.0, 0.1, 0.3, 1.0, 3.0)
  distances = [frechet.frechet_distance(features, features + s * noise) for s in scales]
  assert distances[0] == pytest.approx(0.0, abs=1e-8)
  assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_diagonal_gaussians_closed_form():
  # d² = ‖μ₁ − μ₂‖² + Σᵢ (√σ₁ᵢ − √σ₂ᵢ)²: here 1 + 4 + ((1 − 2)² + (3 − 1)² + (0.5 − 0.5)²) = 10.
  mu1, mu2 = np.array([0.0, 0.0, 1.0]), np.array([1.0, 2.0, 1.0])
  var1, var2 = np.array([1.0, 9.0, 0.25]), np.array([4.0, 1.0, 0.25])
  got = frechet.frechet_distance_from_statistics(mu1, np.diag(var1), mu2, np.diag(var2))
  assert got == pytest.approx(10.0, abs=1e-10)


def test_samples_approach_closed_form():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(200_000, 2)) * np.array([1.0, 3.0])
  b = rng.normal(size=(200_000, 2)) * np.array([2.0, 1.0]) + np.array([1.0, 0.0])
  # 1 + (1 − 2)² + (3 − 1)² = 6.
  assert frechet.frechet_distance(a, b) == pytest.approx(6.0, rel=0.02)


def test_matches_scipy_sqrtm_on_full_covariances():
  scipy_linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  s1, s2 = x @ x.T + 0.1 * np.eye(6), y @ y.T + 0.1 * np.eye(6)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2)
              - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2)).real)
  assert frechet.frechet_distance_from_statistics(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_bad_input():
  with pytest.raises(ValueError, match="at least 2"):
    frechet.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="dimensions differ"):
    frechet.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    frechet.frechet_distance(np.zeros(5), np.zeros((5, 4)))
  with pytest.raises(ValueError, match="Shape mismatch"):
    frechet.frechet_distance_from_statistics(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
