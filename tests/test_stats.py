"""Interval estimates and paired tests (minidiff.metrics.stats) against hand-computed values."""
import math

import numpy as np
import pytest

from minidiff.metrics import stats

Z = 1.959963984540054  # Two-sided 95% normal quantile; Z² = 3.8414588.


def _paired(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
  """Outcome arrays (a, b) of a paired 2×2 table, units in the order both / only A / only B / neither."""
  a = np.repeat([True, True, False, False], [both, only_a, only_b, neither])
  b = np.repeat([True, False, True, False], [both, only_a, only_b, neither])
  return a, b


def test_wilson_hand_computed():
  # k=8, n=10: centre = (8 + Z²/2) / (10 + Z²) = 9.92073 / 13.84146 = 0.716740;
  # half = Z / 13.84146 · √(8·2/10 + Z²/4) = 0.141602 · √(1.6 + 0.960365) = 0.141602 · 1.600114
  #      = 0.226578 → [0.490162, 0.943318].
  interval = stats.wilson_interval(8, 10)
  assert interval.low == pytest.approx(0.490162, abs=1e-6)
  assert interval.high == pytest.approx(0.943318, abs=1e-6)
  # k=0: centre = half = (Z²/2) / (10 + Z²) = 1.920729 / 13.841459 = 0.277533 → [0, 0.277533];
  # k=n mirrors it: [1 − 0.277533, 1].
  assert stats.wilson_interval(0, 10) == stats.Interval(0.0, pytest.approx(0.277533, abs=1e-6))
  assert stats.wilson_interval(10, 10) == stats.Interval(pytest.approx(0.722467, abs=1e-6), 1.0)
  # No trials: no information.
  assert stats.wilson_interval(0, 0) == stats.Interval(0.0, 1.0)


def test_wilson_properties_and_checks():
  narrow, wide = stats.wilson_interval(30, 100, confidence=0.8), stats.wilson_interval(30, 100)
  assert wide.low < narrow.low < 0.3 < narrow.high < wide.high
  low, high = stats.wilson_interval(3, 10).low, stats.wilson_interval(7, 10).high
  assert low == pytest.approx(1 - high)  # Symmetric under k → n − k.
  for k, n in ((-1, 5), (6, 5), (1.5, 5)):
    with pytest.raises(ValueError):
      stats.wilson_interval(k, n)
  with pytest.raises(ValueError):
    stats.wilson_interval(1, 5, confidence=1.0)


def test_mcnemar_exact_hand_computed():
  # b=1, c=6: X ~ Bin(7, 1/2); P[X ≤ 1] = (1 + 7) / 128 → p = 2 · 8/128 = 0.125.
  assert stats.mcnemar_exact(1, 6) == 0.125
  # b=0, c=5: P[X ≤ 0] = 1/32 → p = 2/32 = 0.0625.
  assert stats.mcnemar_exact(0, 5) == 0.0625
  # b=2, c=8: P[X ≤ 2] = (1 + 10 + 45) / 1024 → p = 112/1024 = 0.109375.
  assert stats.mcnemar_exact(2, 8) == 0.109375
  # b=c=3: 2 · (1 + 6 + 15 + 20)/64 = 84/64 > 1 → 1.
  assert stats.mcnemar_exact(3, 3) == 1.0
  assert stats.mcnemar_exact(0, 0) == 1.0
  for b, c in ((1, 6), (0, 5), (4, 17), (40, 61)):
    assert stats.mcnemar_exact(b, c) == stats.mcnemar_exact(c, b)
  with pytest.raises(ValueError):
    stats.mcnemar_exact(-1, 3)


def test_mcnemar_log_space_tail_matches_exact():
  n, m = 3000, 1400
  exact = sum(math.comb(n, i) for i in range(m + 1)) / 2**n
  assert math.exp(stats._log_binomial_half_cdf(m, n)) == pytest.approx(exact, rel=1e-9)
  # Above the exact-arithmetic limit the p-value stays tiny but positive and symmetric.
  p = stats.mcnemar_exact(10_000, 10_600)
  assert 0 < p < 1e-4 and p == stats.mcnemar_exact(10_600, 10_000)


def test_paired_difference_hand_computed():
  # Table: 36 both, 2 only A, 12 only B, 0 neither (n = 50). p_b = 48/50 = 0.96, p_a = 38/50 = 0.76,
  # d = 0.2. Wilson(48/50): centre (48 + 1.920729)/53.841459 = 0.927180, half 0.036402 ·
  # √(48·2/50 + 0.960365) = 0.061781 → l_b = 0.865399, u_b = 0.988961. Wilson(38/50): centre 0.741450,
  # half 0.036402 · √(38·12/50 + 0.960365) = 0.115576 → l_a = 0.625873, u_a = 0.857026.
  # AD − BC = 36·0 − 2·12 = −24 < 0 → φ = −24/√(48·2·38·12) = −24/209.227 = −0.114708.
  # low  = 0.2 − √(0.094601² + 2·0.114708·0.094601·0.097026 + 0.097026²) = 0.2 − √0.0204691 = 0.056930;
  # high = 0.2 + √(0.028961² + 2·0.114708·0.028961·0.134127 + 0.134127²) = 0.2 + √0.0197199 = 0.340428.
  d = stats.paired_difference(*_paired(36, 2, 12, 0))
  assert (d.n, d.b, d.c) == (50, 2, 12)
  assert (d.rate_a, d.rate_b, d.diff) == (pytest.approx(0.76), pytest.approx(0.96), pytest.approx(0.2))
  assert d.interval.low == pytest.approx(0.056930, abs=2e-6)
  assert d.interval.high == pytest.approx(0.340428, abs=2e-6)
  # p = 2 · P[Bin(14, 1/2) ≤ 2] = 2 · (1 + 14 + 91)/16384 = 212/16384.
  assert d.p_value == 212 / 16384


def test_paired_difference_phi_correction_zero_band():
  # 2 both, 1 only A, 1 only B, 1 neither: AD − BC = 2 − 1 = 1 ≤ N/2 = 2.5, so φ = 0 and the interval is
  # the square-and-add of the two Wilson half-widths (the independent-samples Newcombe interval).
  d = stats.paired_difference(*_paired(2, 1, 1, 1))
  wa = wb = stats.wilson_interval(3, 5)
  assert d.diff == 0.0
  assert d.interval.low == pytest.approx(-math.hypot(0.6 - wb.low, wa.high - 0.6))
  assert d.interval.high == pytest.approx(math.hypot(wb.high - 0.6, 0.6 - wa.low))


def test_paired_difference_matches_bootstrap():
  # n = 400: 100 both, 60 only A, 20 only B, 220 neither → rate_a = 0.40, rate_b = 0.30, d = −0.10.
  a, b = _paired(100, 60, 20, 220)
  d = stats.paired_difference(a, b)
  assert (d.b, d.c, d.diff) == (60, 20, pytest.approx(-0.1))
  rng = np.random.default_rng(0)
  rows = rng.integers(0, 400, size=(4000, 400))  # Brute-force bootstrap of the paired difference.
  low, high = np.quantile(b[rows].mean(axis=1) - a[rows].mean(axis=1), [0.025, 0.975])
  assert abs(d.interval.low - low) < 0.01 and abs(d.interval.high - high) < 0.01
  assert d.p_value == pytest.approx(stats.mcnemar_exact(60, 20))
  assert d.p_value < 1e-4


def test_paired_difference_symmetry_and_edges():
  a, b = _paired(10, 7, 2, 31)
  forward, backward = stats.paired_difference(a, b), stats.paired_difference(b, a)
  assert backward.diff == pytest.approx(-forward.diff)
  assert backward.interval.low == pytest.approx(-forward.interval.high)
  assert backward.interval.high == pytest.approx(-forward.interval.low)
  assert (backward.b, backward.c, backward.p_value) == (forward.c, forward.b, forward.p_value)
  same = stats.paired_difference(a, a)
  assert same.diff == 0 and same.p_value == 1.0 and same.interval.contains(0.0)
  # All units have the outcome under B only: the interval reaches but does not pass 1.
  full = stats.paired_difference(np.zeros(20, bool), np.ones(20, bool))
  assert full.diff == 1.0 and full.interval.high == pytest.approx(1.0) and full.interval.low > 0.7
  empty = stats.paired_difference(np.zeros(0, bool), np.zeros(0, bool))
  assert math.isnan(empty.diff) and empty.interval == stats.Interval(-1.0, 1.0)
  assert stats.paired_difference(a.astype(int), b.astype(int)) == forward  # 0/1 integers accepted.
  with pytest.raises(ValueError):
    stats.paired_difference(a, b[:-1])
  with pytest.raises(ValueError):
    stats.paired_difference(a.astype(float) * 0.5, b)


def test_pooled_equals_concatenated():
  pairs = [_paired(10, 7, 2, 31), _paired(3, 9, 1, 20), _paired(20, 5, 5, 10)]
  pooled = stats.pooled_paired_difference(pairs)
  concatenated = stats.paired_difference(np.concatenate([a for a, _ in pairs]),
                                         np.concatenate([b for _, b in pairs]))
  assert pooled.pooled == concatenated
  assert (pooled.pooled.b, pooled.pooled.c) == (7 + 9 + 5, 2 + 1 + 5)
  assert pooled.pooled.p_value == stats.mcnemar_exact(21, 8)
  assert pooled.per_seed == tuple(stats.paired_difference(a, b) for a, b in pairs)
  diffs = [-5 / 50, -8 / 33, 0.0]
  assert pooled.seeds.mean == pytest.approx(np.mean(diffs))
  assert pooled.seeds.std == pytest.approx(np.std(diffs, ddof=1))
  assert (pooled.seeds.min, pooled.seeds.max, pooled.seeds.n) == (pytest.approx(-8 / 33), 0.0, 3)
  with pytest.raises(ValueError):
    stats.pooled_paired_difference([])


def test_seed_summary():
  assert stats.seed_summary([0.5]) == stats.SeedSummary(mean=0.5, std=0.0, min=0.5, max=0.5, n=1)
  summary = stats.seed_summary([1.0, 2.0, 4.0])
  # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, / (3 − 1) = 7/3 → std √(7/3).
  assert summary.mean == pytest.approx(7 / 3) and summary.std == pytest.approx(math.sqrt(7 / 3))
  assert (summary.min, summary.max, summary.n) == (1.0, 4.0, 3)
  with pytest.raises(ValueError):
    stats.seed_summary([])


def test_bootstrap_deterministic_and_covers_mean():
  x = np.random.default_rng(1).normal(1.0, 2.0, size=200)
  first = stats.bootstrap_interval(np.mean, x, num_resamples=2000, seed=7)
  assert first == stats.bootstrap_interval(np.mean, x, num_resamples=2000, seed=7)
  assert first != stats.bootstrap_interval(np.mean, x, num_resamples=2000, seed=8)
  assert first.estimate == pytest.approx(np.mean(x))
  assert first.interval.contains(1.0)
  # The standard error is close to σ̂/√n, and the interval to the normal one.
  se = np.std(x, ddof=1) / math.sqrt(200)
  assert first.standard_error == pytest.approx(se, rel=0.1)
  assert first.interval.width == pytest.approx(2 * Z * se, rel=0.15)


def test_bootstrap_resamples_rows_jointly():
  x = np.arange(50.0)
  features = np.stack([x, 2 * x], axis=1)  # Rows of a 2-D array stay whole.
  result = stats.bootstrap_interval(lambda u, v, f: float(np.max(np.abs(u - v)) + np.max(np.abs(
      f[:, 1] - 2 * f[:, 0]))), x, x.copy(), features, num_resamples=50, seed=0)
  assert result.interval == stats.Interval(0.0, 0.0)
  with pytest.raises(ValueError):
    stats.bootstrap_interval(np.mean, x, x[:-1], seed=0)
  with pytest.raises(ValueError):
    stats.bootstrap_interval(np.mean, x, num_resamples=1, seed=0)


def test_formatters():
  # 47/100: centre (47 + 1.920729)/103.841459 = 0.471110, half 0.018875 · √(24.91 + 0.960365)
  # = 0.096002 → [0.375, 0.567].
  assert stats.format_rate(47, 100) == "0.47 [0.38, 0.57]"
  assert stats.format_rate(0, 10) == "0.00 [0.00, 0.28]"
  assert stats.format_rate(0, 0) == "nan [0.00, 1.00]"
  assert stats.format_rate(1, 3, digits=3) == "0.333 [0.061, 0.792]"
  negative = stats.paired_difference(*_paired(100, 60, 20, 220))
  assert stats.format_diff(negative) == "\u22120.10 [\u22120.14, \u22120.06], p=9e-06"
  positive = stats.paired_difference(*_paired(36, 2, 12, 0))
  assert stats.format_diff(positive) == "+0.20 [+0.06, +0.34], p=0.013"
  zero = stats.paired_difference(*_paired(2, 1, 1, 1))
  assert stats.format_diff(zero).startswith("0.00 [\u22120.")
  assert stats.format_p(1.0) == "p=1" and stats.format_p(0.0042) == "p=0.0042"
