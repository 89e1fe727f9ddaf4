"""Interval estimates and paired tests for the study's rates.

Every rate the study reports carries an interval, and every arm is compared with a baseline arm
sampled on the SAME initial noises, so an arm-vs-baseline comparison is paired: unit i is "noise i
under arm A" and "noise i under arm B". The pieces:

  * `wilson_interval`: Wilson score interval for one binomial rate k/n.
  * `mcnemar_exact`: exact two-sided McNemar test from the discordant counts (no scipy: exact
    binomial tail with integer arithmetic, log-space for very large counts).
  * `paired_difference`: rate_b − rate_a for paired boolean outcomes, with Newcombe's hybrid score
    interval for paired proportions (Newcombe 1998, method 10) and the exact McNemar p-value.
  * `pooled_paired_difference`: the same over several training seeds (units concatenated), plus the
    per-seed differences and their spread (`seed_summary`).
  * `bootstrap_interval`: generic percentile bootstrap over jointly resampled rows (used for the
    Fréchet distance, whose sampling distribution has no closed form).
  * `format_rate`, `format_diff`: the report strings, e.g. "0.47 [0.40, 0.54]" and
    "−0.22 [−0.29, −0.15], p=3e-06" (a real minus sign, U+2212, for negative numbers).

Only numpy and the standard library are used.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Callable, Sequence

import numpy as np

MINUS = "\u2212"  # The minus sign used by the report formatters.
_EXACT_MCNEMAR_MAX_N = 20_000  # Above this many discordant pairs, sum the binomial tail in log space.


@dataclasses.dataclass(frozen=True)
class Interval:
  """A closed interval [low, high]."""
  low: float
  high: float

  @property
  def width(self) -> float:
    return self.high - self.low

  def contains(self, value: float) -> bool:
    return self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """rate_b − rate_a over n paired units.

  Attributes:
    n: number of paired units.
    rate_a: fraction of units with the outcome under arm A.
    rate_b: fraction of units with the outcome under arm B.
    diff: rate_b − rate_a (= (c − b) / n).
    interval: confidence interval for `diff` (Newcombe 1998 method 10, see `paired_difference`).
    b: discordant units with the outcome only under A.
    c: discordant units with the outcome only under B.
    p_value: exact two-sided McNemar p-value for rate_a = rate_b.
    confidence: the interval's confidence level.
  """
  n: int
  rate_a: float
  rate_b: float
  diff: float
  interval: Interval
  b: int
  c: int
  p_value: float
  confidence: float


@dataclasses.dataclass(frozen=True)
class SeedSummary:
  """Spread of one number over training seeds (std with ddof = 1; 0 for a single seed)."""
  mean: float
  std: float
  min: float
  max: float
  n: int


@dataclasses.dataclass(frozen=True)
class PooledPairedDifference:
  """A paired difference over several training seeds.

  Attributes:
    pooled: the difference over all seeds' units concatenated (each seed's samples are independent
      units); its McNemar test uses the summed discordant counts. The interval treats units as
      independent and so ignores seed-to-seed variation: read it together with `per_seed`.
    per_seed: the difference of each seed on its own, in input order.
    seeds: mean / std / min / max of the per-seed `diff` values.
  """
  pooled: PairedDifference
  per_seed: tuple[PairedDifference, ...]
  seeds: SeedSummary


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
  """A percentile bootstrap interval.

  Attributes:
    estimate: the statistic on the original arrays.
    interval: percentile interval of the resampled statistics.
    standard_error: standard deviation (ddof = 1) of the resampled statistics.
    num_resamples: how many resamples were drawn.
    confidence: the interval's confidence level.
    bias: mean of the resampled statistics minus the estimate.
  """
  estimate: float
  interval: Interval
  standard_error: float
  num_resamples: int
  confidence: float
  bias: float = 0.0


def _check_confidence(confidence: float) -> None:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1); got {confidence}.")


def _z(confidence: float) -> float:
  """Two-sided standard normal quantile: P[|Z| ≤ z] = confidence."""
  _check_confidence(confidence)
  return statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_counts(k: int, n: int) -> None:
  if int(k) != k or int(n) != n:
    raise ValueError(f"k and n must be integers; got k={k}, n={n}.")
  if n < 0 or k < 0 or k > n:
    raise ValueError(f"Need 0 ≤ k ≤ n; got k={k}, n={n}.")


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> Interval:
  """Wilson score interval for the binomial rate k / n.

  centre = (k + z²/2) / (n + z²), half-width = z / (n + z²) · √(k (n − k) / n + z²/4). The interval
  stays inside [0, 1], has low = 0 exactly at k = 0 and high = 1 exactly at k = n.

  Args:
    k: number of successes, 0 ≤ k ≤ n.
    n: number of trials. With n = 0 there is no information and the interval is [0, 1] (the rate
      k / n itself is undefined: callers report nan).
    confidence: two-sided coverage level.

  Returns:
    The interval.
  """
  _check_counts(k, n)
  z = _z(confidence)
  if n == 0:
    return Interval(0.0, 1.0)
  z2 = z * z
  centre = (k + z2 / 2.0) / (n + z2)
  half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4.0)
  low = 0.0 if k == 0 else max(0.0, centre - half)
  high = 1.0 if k == n else min(1.0, centre + half)
  return Interval(low, high)


def _log_binomial_half_cdf(m: int, n: int) -> float:
  """log P[X ≤ m] for X ~ Binomial(n, 1/2), by a log-sum-exp over the terms (large n)."""
  log_terms = []
  log_term = -n * math.log(2.0)  # log C(n, 0) / 2^n
  for i in range(m + 1):
    if i > 0:
      log_term += math.log(n - i + 1) - math.log(i)
    log_terms.append(log_term)
  top = max(log_terms)
  return top + math.log(math.fsum(math.exp(t - top) for t in log_terms))


def mcnemar_exact(b: int, c: int) -> float:
  """Exact two-sided McNemar p-value from the discordant counts.

  p = min(1, 2 · P[X ≤ min(b, c)]) with X ~ Binomial(b + c, 1/2): the exact conditional test of
  "the outcome is as likely only under A as only under B". Symmetric in b and c; b = c = 0 gives 1.

  Args:
    b: units with the outcome only under arm A.
    c: units with the outcome only under arm B.

  Returns:
    The p-value in (0, 1].
  """
  if int(b) != b or int(c) != c or b < 0 or c < 0:
    raise ValueError(f"Discordant counts must be non-negative integers; got b={b}, c={c}.")
  b, c = int(b), int(c)
  n, m = b + c, min(b, c)
  if n == 0:
    return 1.0
  if n <= _EXACT_MCNEMAR_MAX_N:
    tail = sum(math.comb(n, i) for i in range(m + 1))
    return min(1.0, 2 * tail / 2**n)  # int / int: correctly rounded even for huge integers.
  return min(1.0, 2.0 * math.exp(_log_binomial_half_cdf(m, n)))


def _as_outcomes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a), np.asarray(b)
  if a.ndim != 1 or a.shape != b.shape:
    raise ValueError(f"Paired outcomes must be 1-D arrays of one shape; got {a.shape}, {b.shape}.")
  for name, x in (("a", a), ("b", b)):
    if x.dtype != bool and not np.isin(x, (0, 1)).all():
      raise ValueError(f"Outcomes {name} must be boolean (or 0/1); got dtype {x.dtype}.")
  return a.astype(bool), b.astype(bool)


def _newcombe_paired(both: int, only_a: int, only_b: int, neither: int,
                     confidence: float) -> Interval:
  """Newcombe (1998) method 10 interval for rate_b − rate_a from the 2×2 paired table."""
  n = both + only_a + only_b + neither
  p_b, p_a = (both + only_b) / n, (both + only_a) / n
  l_b, u_b = dataclasses.astuple(wilson_interval(both + only_b, n, confidence=confidence))
  l_a, u_a = dataclasses.astuple(wilson_interval(both + only_a, n, confidence=confidence))
  # Newcombe's corrected phi: the correlation of the two outcomes over the units with its numerator
  # AD − BC shrunk by N/2 towards 0 when positive (0 in [0, N/2]); plain when negative; 0 when a
  # margin of the table is empty.
  denominator = (both + only_b) * (only_a + neither) * (both + only_a) * (only_b + neither)
  cross = both * neither - only_a * only_b
  numerator = max(cross - n / 2.0, 0.0) if cross >= 0 else float(cross)
  phi = 0.0 if denominator == 0 else numerator / math.sqrt(denominator)
  diff = p_b - p_a
  # (x² − 2φxy + y²) ≥ (1 − |φ|)(x² + y²) ≥ 0; the clamp only absorbs round-off.
  lower = math.sqrt(max(0.0, (p_b - l_b)**2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a)**2))
  upper = math.sqrt(max(0.0, (u_b - p_b)**2 - 2 * phi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a)**2))
  return Interval(max(-1.0, diff - lower), min(1.0, diff + upper))


def paired_difference(a: np.ndarray, b: np.ndarray, *,
                      confidence: float = 0.95) -> PairedDifference:
  """rate_b − rate_a for paired boolean outcomes, with interval and exact McNemar p-value.

  The interval is Newcombe's hybrid score interval for paired proportions (Newcombe 1998, "Improved
  confidence intervals for the difference between binomial proportions based on paired data",
  method 10): the Wilson intervals (l_a, u_a), (l_b, u_b) of the two rates combined as
    low  = d − √((p_b − l_b)² − 2φ (p_b − l_b)(u_a − p_a) + (u_a − p_a)²),
    high = d + √((u_b − p_b)² − 2φ (u_b − p_b)(p_a − l_a) + (p_a − l_a)²),
  with d = p_b − p_a and φ Newcombe's corrected correlation of the two outcomes over the units: with
  the 2×2 table (A both, B only under one arm, C only under the other, D neither; N units) and
  P = (A+B)(C+D)(A+C)(B+D), φ = (AD − BC − N/2)/√P if AD − BC > N/2, 0 if 0 ≤ AD − BC ≤ N/2,
  (AD − BC)/√P if AD − BC < 0, and 0 when P = 0 (as in Newcombe 1998; Altman et al., "Statistics
  with Confidence", 2000, ch. 6; Fagerland, Lydersen & Laake 2017, ch. 8). The Wilson intervals have
  no continuity correction. Closed form, inside [−1, 1], and well-behaved at rates near 0 or 1 and
  for small discordant counts, where the Wald interval fails.

  Args:
    a: [n] outcomes under arm A (e.g. "sample i is a copy" with the baseline arm).
    b: [n] outcomes under arm B on the same units (same initial noise i).
    confidence: two-sided coverage level.

  Returns:
    The difference, its interval, the discordant counts and the McNemar p-value. With n = 0 the
    rates and diff are nan, the interval is [−1, 1] and p = 1.
  """
  _check_confidence(confidence)
  a, b = _as_outcomes(a, b)
  n = int(a.size)
  both = int(np.sum(a & b))
  only_a = int(np.sum(a & ~b))
  only_b = int(np.sum(~a & b))
  neither = n - both - only_a - only_b
  if n == 0:
    nan = float("nan")
    return PairedDifference(0, nan, nan, nan, Interval(-1.0, 1.0), 0, 0, 1.0, confidence)
  rate_a, rate_b = (both + only_a) / n, (both + only_b) / n
  return PairedDifference(
      n=n, rate_a=rate_a, rate_b=rate_b, diff=(only_b - only_a) / n,
      interval=_newcombe_paired(both, only_a, only_b, neither, confidence),
      b=only_a, c=only_b, p_value=mcnemar_exact(only_a, only_b), confidence=confidence)


def seed_summary(values: Sequence[float]) -> SeedSummary:
  """Mean, std (ddof = 1; 0 for a single seed), min and max of per-seed values."""
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError("seed_summary needs at least one value.")
  std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
  return SeedSummary(mean=float(np.mean(values)), std=std, min=float(np.min(values)),
                     max=float(np.max(values)), n=int(values.size))


def pooled_paired_difference(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *,
                             confidence: float = 0.95) -> PooledPairedDifference:
  """Paired difference over several training seeds, pooled and per seed.

  Args:
    pairs: one (a, b) pair of [n_seed] boolean outcome arrays per training seed (same study,
      different trained models; a and b paired within a seed).
    confidence: two-sided coverage level.

  Returns:
    The pooled difference (units concatenated over seeds, McNemar on the summed discordant counts),
    the per-seed differences and the spread of the per-seed `diff`.
  """
  if len(pairs) == 0:
    raise ValueError("pooled_paired_difference needs at least one seed.")
  checked = [_as_outcomes(a, b) for a, b in pairs]
  per_seed = tuple(paired_difference(a, b, confidence=confidence) for a, b in checked)
  pooled = paired_difference(np.concatenate([a for a, _ in checked]),
                             np.concatenate([b for _, b in checked]), confidence=confidence)
  return PooledPairedDifference(pooled=pooled, per_seed=per_seed,
                                seeds=seed_summary([d.diff for d in per_seed]))


def bootstrap_interval(statistic: Callable[..., float], *arrays: np.ndarray,
                       num_resamples: int = 2000, seed: int,
                       confidence: float = 0.95, recentre: bool = False) -> BootstrapResult:
  """Percentile bootstrap interval of `statistic(*arrays)`.

  Each resample draws n row indices with replacement (numpy `Generator(PCG64(seed))`, one draw of n
  indices per resample) and applies them to every array jointly, so rows that belong together stay
  together. The result is deterministic for a fixed seed.

  Args:
    statistic: function of the arrays returning a float (e.g. a Fréchet distance from a feature
      array, with the reference statistics bound in a closure).
    *arrays: one or more arrays sharing their first dimension n ≥ 1.
    num_resamples: number of bootstrap resamples (≥ 2).
    seed: seed of the resampling generator.
    confidence: two-sided coverage level; the interval is the (1 ± confidence) / 2 quantiles.
    recentre: shift the interval by the bootstrap bias (for a statistic that resampling inflates,
      e.g. a Fréchet distance: repeated rows shrink the covariance), so it brackets the estimate.

  Returns:
    The estimate on the original arrays, the percentile interval and the bootstrap standard error.
  """
  _check_confidence(confidence)
  if not arrays:
    raise ValueError("bootstrap_interval needs at least one array.")
  if num_resamples < 2:
    raise ValueError(f"num_resamples must be at least 2; got {num_resamples}.")
  arrays = tuple(np.asarray(x) for x in arrays)
  n = arrays[0].shape[0] if arrays[0].ndim else 0
  if n == 0 or any(x.ndim == 0 or x.shape[0] != n for x in arrays):
    raise ValueError(f"Arrays must share a non-empty first dimension; got shapes "
                     f"{[x.shape for x in arrays]}.")
  rng = np.random.Generator(np.random.PCG64(seed))
  replicates = np.empty(num_resamples, np.float64)
  for r in range(num_resamples):
    rows = rng.integers(0, n, size=n)
    replicates[r] = float(statistic(*(x[rows] for x in arrays)))
  alpha = (1.0 - confidence) / 2.0
  estimate = float(statistic(*arrays))
  bias = float(replicates.mean() - estimate)
  low, high = np.quantile(replicates, [alpha, 1.0 - alpha]) - (bias if recentre else 0.0)
  return BootstrapResult(estimate=estimate, interval=Interval(float(low), float(high)),
                         standard_error=float(np.std(replicates, ddof=1)),
                         num_resamples=num_resamples, confidence=confidence, bias=bias)


def cluster_weights(clusters: np.ndarray, *, num_resamples: int = 2000, seed: int
                    ) -> np.ndarray:
  """Two-stage cluster bootstrap weights: how often each unit appears in each resample.

  Stage 1 draws the clusters (e.g. memorized images) with replacement; stage 2 draws, within each
  drawn cluster, its units (e.g. noises) with replacement. A statistic that is a weighted mean
  over units, Σ wᵢ yᵢ / Σ wᵢ, is then evaluated once per row of the result. With few clusters the
  interval is wide: two memorized images support a statement about two images.

  Args:
    clusters: [n] cluster id of each unit (any integers).

  Returns:
    [num_resamples, n] float64 counts (each row sums to about n).
  """
  clusters = np.asarray(clusters).reshape(-1)
  if clusters.size == 0:
    raise ValueError("cluster_weights needs at least one unit.")
  if num_resamples < 2:
    raise ValueError(f"num_resamples must be at least 2; got {num_resamples}.")
  ids, inverse = np.unique(clusters, return_inverse=True)
  members = [np.flatnonzero(inverse == j) for j in range(len(ids))]
  rng = np.random.Generator(np.random.PCG64(seed))
  w = np.zeros((num_resamples, clusters.size))
  for r in range(num_resamples):
    for j in rng.integers(0, len(ids), size=len(ids)):
      np.add.at(w[r], members[j][rng.integers(0, len(members[j]), size=len(members[j]))], 1.0)
  return w


def sign_flip_p(unit_diffs: np.ndarray, *, num_draws: int = 10_000, seed: int = 0) -> float:
  """Two-sided randomisation p-value of mean(unit_diffs) = 0 by flipping each unit's sign.

  Valid for paired data whose units are independent (e.g. one noise, its differences summed over
  the training seeds that reuse it): under the null the two arms' labels are exchangeable within a
  unit. Exact (all 2ⁿ flips) for n ≤ 16; else `num_draws` random flips, p = (1 + hits)/(1 + draws).
  """
  d = np.asarray(unit_diffs, np.float64).reshape(-1)
  d = d[d != 0]
  if d.size == 0:
    return 1.0
  observed = abs(d.sum())
  if d.size <= 16:
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
    return float(np.mean(np.abs(signs @ d) >= observed - 1e-12))
  rng = np.random.Generator(np.random.PCG64(seed))
  hits = 0
  for start in range(0, num_draws, 1000):
    signs = rng.choice([-1.0, 1.0], size=(min(1000, num_draws - start), d.size))
    hits += int(np.sum(np.abs(signs @ d) >= observed - 1e-12))
  return float((1 + hits) / (1 + num_draws))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
  """Holm–Bonferroni adjusted p-values (same order; None stays None and is not counted).

  The adjusted p of the k-th smallest of m values is max over j ≤ k of min(1, (m − j + 1) p₍ⱼ₎):
  reject at level α where the adjusted p ≤ α controls the family-wise error rate.
  """
  idx = [i for i, p in enumerate(p_values) if p is not None]
  out: list[float | None] = [None] * len(p_values)
  order = sorted(idx, key=lambda i: p_values[i])
  running, m = 0.0, len(order)
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * float(p_values[i])))
    out[i] = running
  return out


def _number(x: float, digits: int, *, signed: bool = False) -> str:
  """x with `digits` decimals, a real minus sign, no "−0.00", and "+" for positives when signed."""
  text = f"{abs(x):.{digits}f}"
  if float(text) == 0.0:
    return text
  if x < 0:
    return MINUS + text
  return "+" + text if signed else text


def format_p(p: float) -> str:
  """A p-value as "p=0.13", "p=0.0042" (two significant digits) or "p=3e-06" (below 0.001)."""
  if math.isnan(p):
    return "p=nan"
  return f"p={p:.0e}" if p < 1e-3 else f"p={p:.2g}"


def format_rate(k: int, n: int, *, confidence: float = 0.95, digits: int = 2) -> str:
  """A rate with its Wilson interval, e.g. "0.47 [0.40, 0.54]"; "nan [0.00, 1.00]" for n = 0."""
  interval = wilson_interval(k, n, confidence=confidence)
  rate = "nan" if n == 0 else _number(k / n, digits)
  return f"{rate} [{_number(interval.low, digits)}, {_number(interval.high, digits)}]"


def format_diff(difference: PairedDifference, *, digits: int = 2) -> str:
  """A paired difference, e.g. "−0.22 [−0.29, −0.15], p=3e-06" (positives carry a "+")."""
  if difference.n == 0:
    return f"nan [{_number(-1.0, digits)}, {_number(1.0, digits, signed=True)}], p=1"
  low, high = difference.interval.low, difference.interval.high
  return (f"{_number(difference.diff, digits, signed=True)} [{_number(low, digits, signed=True)}, "
          f"{_number(high, digits, signed=True)}], {format_p(difference.p_value)}")
