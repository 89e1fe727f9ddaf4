"""Per-sample metrics of a study arm, in one registry, and their per-group rates with intervals.

A metric is one function `(context, measured) -> [N] bool`; adding a metric (or a detector) is
one entry in `METRICS`. The engine turns every metric into a rate with a Wilson interval per
condition group and pairs it against the baseline arm on the same noises.

The primary copy flag `copy` is the known-answer benchmark's winner (docs/results/copy_benchmark/):
the sample's normalised cross-correlation with the training image its condition names, best over
±1-pixel shifts, above that image's threshold — the value that at most 1% of the real held-out
images of its class exceed. `copy_any` asks the same of the most correlated training image (any
class, per-class thresholds); `copy_ratio` is the classic ratio test d₁/d₂ < 1/3, kept as a column.
The memorization monitor and AMG trigger on their own ratio-type tests, never on `copy`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from minidiff.metrics import classifier as classifier_lib
from minidiff.metrics import copy_detection as cd
from minidiff.metrics import frechet, memorization, stats
from minidiff.study.conditions import ConditionSet


@dataclasses.dataclass(frozen=True)
class Context:
  """What the metrics of every arm of one trained model are measured against."""

  conditions: ConditionSet
  unique_images: np.ndarray  # [U, H, W, C] the de-duplicated training set
  is_duplicated: np.ndarray  # [U] bool
  classifier: classifier_lib.Classifier | None
  fd_reference: np.ndarray | None  # [R, F] features of real images the diffusion model never saw
  labels: np.ndarray | None = None  # [U] classes of the unique images
  calibration: cd.StudyCalibration | None = None  # the copy thresholds (None: no copy / copy_any)


def calibrated_context(conditions: ConditionSet, unique_images: np.ndarray, labels: np.ndarray,
                       is_duplicated: np.ndarray, heldout: tuple[np.ndarray, np.ndarray], *,
                       classifier: classifier_lib.Classifier | None = None,
                       fd_reference: np.ndarray | None = None) -> Context:
  """A Context whose copy thresholds are set on `heldout` = (images, labels), real images that no
  model trained on, for the training images `conditions` name and for copies of any image."""
  calibration = cd.calibrate_study(unique_images, labels, heldout[0], heldout[1],
                                   conditions.named().reshape(-1))
  return Context(conditions, unique_images, is_duplicated, classifier, fd_reference,
                 labels=np.asarray(labels), calibration=calibration)


@dataclasses.dataclass(frozen=True)
class Measured:
  """The expensive per-sample measurements, made once per arm and shared by every metric."""

  memorization: memorization.MemorizationResult
  predicted: np.ndarray | None  # [N] the evaluation classifier's class, None without one
  features: np.ndarray | None  # [N, F] its penultimate features
  scores: cd.CopyScores | None = None  # the copy scores (with a calibrated Context)


def measure(ctx: Context, samples: np.ndarray) -> Measured:
  """Nearest neighbours in the de-duplicated training set, copy scores, the classifier's view."""
  mem = memorization.analyse_samples(samples, ctx.unique_images, ctx.is_duplicated)
  scores = None
  if ctx.calibration is not None:
    target = None
    if ctx.conditions is not None:  # the named image it copies most, if the condition names several
      target = cd.choose_named(samples, ctx.unique_images, ctx.conditions.named(),
                               thresholds=ctx.calibration.named_thresholds,
                               score=ctx.calibration.named)
    scores = cd.score_samples(samples, ctx.unique_images, target=target)
  if ctx.classifier is None:
    return Measured(mem, None, None, scores)
  return Measured(mem, ctx.classifier.predict(samples), ctx.classifier.features(samples), scores)


def per_sample_scores(measured: Measured, *, digits: int = 6) -> dict[str, list]:
  """JSON-ready per-sample scores, so a reader can re-threshold without the .npz files: NN₁ / NN₂
  (pixel L2) and their indices, the named image's L2 and shift-NCC, the most correlated image."""
  def r(x):
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.asarray(x)]
  m = measured.memorization
  out = dict(nn1_distance=r(m.nn_distance[:, 0]), nn2_distance=r(m.nn_distance[:, 1]),
             nn2_index=m.nn_index[:, 1].tolist())
  s = measured.scores
  if s is not None:
    out.update(target=s.target.tolist(), target_distance=r(s.target_distance),
               target_ncc=r(s.target_ncc), target_ncc_shift=r(s.target_ncc_shift),
               ncc_shift=r(s.ncc_shift), ncc_shift_index=s.ncc_shift_index.tolist())
  return out


@dataclasses.dataclass(frozen=True)
class Metric:
  description: str
  fn: Callable[[Context, Measured], np.ndarray]  # → [N] bool; NaN-free
  applies: Callable[[Context], np.ndarray] = lambda ctx: np.ones(len(ctx.conditions), bool)
  needs: Callable[[Context], bool] = lambda ctx: True  # False: the context lacks its inputs


def _copy(ctx: Context, m: Measured) -> np.ndarray:
  return ctx.calibration.copy(m.scores)


def _copy_any(ctx: Context, m: Measured) -> np.ndarray:
  return ctx.calibration.copy_any(m.scores, ctx.labels)


def _copy_ratio(ctx: Context, m: Measured) -> np.ndarray:
  return m.memorization.is_copy


def _copy_ratio_target(ctx: Context, m: Measured) -> np.ndarray:
  target = ctx.conditions.target_image
  return m.memorization.is_copy & (target >= 0) & (m.memorization.nn_index[:, 0] == target)


def _copy_ratio_duplicated(ctx: Context, m: Measured) -> np.ndarray:
  return m.memorization.copies_duplicated


def _carlini(ctx: Context, m: Measured) -> np.ndarray:
  return m.memorization.carlini < 0.5


def _class_correct(ctx: Context, m: Measured) -> np.ndarray:
  if m.predicted is None:
    return np.zeros(len(ctx.conditions), bool)
  return m.predicted == ctx.conditions.requested_class


def _names_an_image(ctx: Context) -> np.ndarray:
  return ctx.conditions.target_image >= 0


def _calibrated(ctx: Context) -> bool:
  return ctx.calibration is not None


METRICS: dict[str, Metric] = {
    "copy": Metric("primary: NCC with the named training image, best over ±1-px shifts, above "
                   "that image's threshold at 1% FPR on real held-out images of its class",
                   _copy, applies=_names_an_image, needs=_calibrated),
    "copy_any": Metric("NCC with the most correlated training image (±1-px shifts) above its "
                       "class's threshold at 1% FPR on held-out images", _copy_any,
                       needs=_calibrated),
    "copy_ratio": Metric("ratio test ‖x−NN₁‖/‖x−NN₂‖ < 1/3 against the de-duplicated training set",
                         _copy_ratio),
    "copy_ratio_target": Metric("ratio-test copy whose NN₁ is the image the condition names",
                                _copy_ratio_target),
    "copy_ratio_duplicated": Metric("ratio-test copy whose NN₁ is a duplicated image",
                                    _copy_ratio_duplicated),
    "carlini_below_0_5": Metric("Carlini et al.'s normalised distance < 0.5", _carlini),
    "class_correct": Metric("the evaluation classifier's class is the requested one",
                            _class_correct,
                            applies=lambda ctx: ctx.conditions.requested_class >= 0,
                            needs=lambda ctx: ctx.classifier is not None),
}


def flags(ctx: Context, measured: Measured) -> dict[str, np.ndarray]:
  """Every registered metric's per-sample flags ([N] bool; False where the metric does not apply).
  Metrics whose inputs the context lacks (no classifier, no copy calibration) are left out."""
  out = {}
  for name, metric in METRICS.items():
    if not metric.needs(ctx):
      continue
    out[name] = np.asarray(metric.fn(ctx, measured), bool) & metric.applies(ctx)
  return out


def rate(flag: np.ndarray, where: np.ndarray) -> dict[str, Any]:
  """{k, n, rate, ci: [low, high]} of `flag` over the rows `where` (95% Wilson interval)."""
  k, n = int(flag[where].sum()), int(where.sum())
  ci = stats.wilson_interval(k, n)
  return dict(k=k, n=n, rate=(k / n if n else None), ci=[ci.low, ci.high])


def group_rates(ctx: Context, per_sample: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
  """group → metric → rate with interval; "all" is every sample, restricted to where it applies."""
  groups = {"all": np.ones(len(ctx.conditions), bool), **ctx.conditions.groups}
  out = {}
  for g, where in groups.items():
    out[g] = {name: rate(flag, where & METRICS[name].applies(ctx)) for name, flag in per_sample.items()}
  return out


def applies_masks(ctx: Context) -> dict[str, str]:
  """metric → "0101…" where it applies (a reader pools a metric over these rows only)."""
  out = {}
  for name, metric in METRICS.items():
    if metric.needs(ctx):
      out[name] = "".join("1" if v else "0" for v in metric.applies(ctx))
  return out


def frechet_with_interval(features: np.ndarray, reference: np.ndarray, *, seed: int,
                          num_resamples: int = 200, confidence: float = 0.95) -> dict[str, Any]:
  """Fréchet distance of sample features to the reference, with a bootstrap interval over the
  samples (the reference held fixed), recentred by the bootstrap bias: resampling repeats rows,
  which shrinks the covariance and raises FD (at n = 40, 128 features, by ~50%)."""
  boot = stats.bootstrap_interval(lambda f: frechet.frechet_distance(f, reference), features,
                                  num_resamples=num_resamples, seed=seed, confidence=confidence,
                                  recentre=True)
  return dict(value=boot.estimate, ci=[boot.interval.low, boot.interval.high],
              bootstrap_bias=boot.bias, n=int(features.shape[0]),
              n_reference=int(reference.shape[0]), num_resamples=num_resamples)


def frechet_floor(pool: np.ndarray, reference: np.ndarray, *, n: int, seed: int,
                  repeats: int = 5) -> dict[str, Any]:
  """FD of `n` real images (drawn from `pool`, disjoint from the reference) to the reference:
  the level below which FD differences at this n mean nothing. Mean and range over `repeats` draws."""
  rng = np.random.default_rng(seed)
  n = min(n, pool.shape[0])
  values = [frechet.frechet_distance(pool[rng.choice(pool.shape[0], n, replace=False)], reference)
            for _ in range(repeats)]
  return dict(mean=float(np.mean(values)), min=float(np.min(values)), max=float(np.max(values)),
              n=int(n), n_reference=int(reference.shape[0]), repeats=repeats)


def detection_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
  """AUC of `scores` for `positive` vs the rest; None when a group is empty or a score is missing."""
  from minidiff.metrics import detection
  if positive.all() or not positive.any() or not np.isfinite(scores).all():
    return None
  return detection.auc(scores, positive)


DETECTION_SCORES = {
    "mean_d_eps": "mean over steps of ‖ε_c − ε_u‖₂ (Wen et al.)",
    "first_d_eps": "‖ε_c − ε_u‖₂ at the first step",
    "mean_d_x0": "mean over steps of ‖x̂₀_c − x̂₀_u‖₂",
    "first_d_x0": "‖x̂₀_c − x̂₀_u‖₂ at the first step (a constant multiple of first_d_eps: same ranks)",
}


def detection_figures(d_eps: np.ndarray, d_x0: np.ndarray, targets: Mapping[str, np.ndarray]
                      ) -> dict[str, dict[str, dict[str, float] | None]]:
  """Wen et al.'s detection figures (AUC, TPR at 1% FPR, best-threshold accuracy) of every score of
  DETECTION_SCORES, for every named target ([N] bool, e.g. memorized conditions or copies).

  d_eps, d_x0: [S, N] per-step distances. A score/target pair is None where a group is empty or a
  score is missing (NaN: the arm skipped a branch).
  """
  from minidiff.metrics import detection
  scores = {"mean_d_eps": d_eps.mean(axis=0), "first_d_eps": d_eps[0],
            "mean_d_x0": d_x0.mean(axis=0), "first_d_x0": d_x0[0]}
  out: dict[str, dict[str, dict[str, float] | None]] = {}
  for target, positive in targets.items():
    positive = np.asarray(positive, bool)
    out[target] = {}
    for name, s in scores.items():
      ok = positive.any() and not positive.all() and np.isfinite(s).all()
      out[target][name] = detection.detection_figures(s, positive) if ok else None
  return out
