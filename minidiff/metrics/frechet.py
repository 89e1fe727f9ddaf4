"""Fréchet distance between two feature sets, each summarised by a Gaussian (Heusel et al. 2017).

  d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})

All arithmetic is float64 numpy. tr((Σ₁Σ₂)^{1/2}) is computed without a general matrix square root:
with S = Σ₁^{1/2} (symmetric, from an eigendecomposition), Σ₁Σ₂ = S⁻¹ (S Σ₂ S) S is similar to the
symmetric PSD matrix S Σ₂ S, so the trace is the sum of the square roots of its eigenvalues (clamped
at 0 against round-off). This stays real and stable for singular covariances (fewer samples than
feature dimensions), where `scipy.linalg.sqrtm` can return complex noise.

The number depends on the sample count (the estimate is biased upward for small sets): always report
the counts with it.
"""
from __future__ import annotations

import numpy as np


def _check_features(features: np.ndarray, name: str) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f"{name} must be [N, D] features; got shape {features.shape}.")
  if features.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 rows to estimate a covariance; got {features.shape[0]}.")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{name} contains NaN or infinite values.")
  return features


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Features [N, D] → (mean [D], covariance [D, D]) in float64; covariance with ddof = 1."""
  features = _check_features(features, "features")
  return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues → 0)."""
  eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((Σ₁ Σ₂)^{1/2}) for symmetric PSD Σ₁, Σ₂, as Σ √eig(Σ₁^{1/2} Σ₂ Σ₁^{1/2})."""
  root = _psd_sqrt(np.asarray(sigma1, np.float64))
  inner = root @ np.asarray(sigma2, np.float64) @ root
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                                     sigma2: np.ndarray) -> float:
  """Fréchet distance (squared, as in FID) between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"Shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
                     f"sigma2 {sigma2.shape}; expected [D] and [D, D] for one D.")
  mean_term = float(np.sum((mu1 - mu2) ** 2))
  cov_term = float(np.trace(sigma1) + np.trace(sigma2)) - 2.0 * trace_sqrt_product(sigma1, sigma2)
  return max(mean_term + cov_term, 0.0)  # Clamp round-off below zero for identical sets.


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """Fréchet distance between feature sets [N_a, D] and [N_b, D] (N_a, N_b ≥ 2)."""
  features_a = _check_features(features_a, "features_a")
  features_b = _check_features(features_b, "features_b")
  if features_a.shape[1] != features_b.shape[1]:
    raise ValueError(f"Feature dimensions differ: {features_a.shape[1]} vs {features_b.shape[1]}.")
  return frechet_distance_from_statistics(*gaussian_statistics(features_a),
                                          *gaussian_statistics(features_b))
