"""Per-sample metrics of a study arm, in one registry, and their per-group rates with intervals.

A metric is one `Metric` in `METRICS`: its per-sample function `(context, measured) -> [N] bool`,
where it applies, what it needs, its report column, the group it is reported on, how it pools and
the role it plays (the study's copy rate, its alignment). The engine stores every metric's flags
in results.json; `minidiff.study.summary`, `report` and `figures` read columns and roles from here,
never a metric by name. Detectors are the second kind of entry: `DETECTION_SCORES`, per-sample
scores from an arm's guidance distances, tested against `DETECTION_TARGETS`. Older results.json
files are read through `stored_metrics`, the one place their names are mapped. docs/metrics.md
lists the metrics and shows how to add one.

The primary copy flag `copy` is the known-answer benchmark's winner (docs/results/copy_benchmark/):
the sample's normalised cross-correlation with the training image its condition names, best over
±1-pixel shifts, above that image's threshold — the value that at most 1% of the real held-out
images of its class exceed. `copy_any` asks the same of the most correlated training image (any
class, per-class thresholds); `copy_ratio` is the classic ratio test d₁/d₂ < 1/3, kept as a column.
The memorization monitor and AMG trigger on their own ratio-type tests, never on `copy`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

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
  """The expensive per-sample measurements, made once per arm and shared by every metric, and
  the samples they were made on."""

  memorization: memorization.MemorizationResult
  predicted: np.ndarray | None  # [N] the evaluation classifier's class, None without one
  features: np.ndarray | None  # [N, F] its penultimate features
  scores: cd.CopyScores | None = None  # the copy scores (with a calibrated Context)
  samples: np.ndarray | None = None  # [N, H, W, C] in [−1, 1]


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
    return Measured(mem, None, None, scores, samples)
  return Measured(mem, ctx.classifier.predict(samples), ctx.classifier.features(samples), scores,
                  samples)


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


ROLES: dict[str, str] = {  # role → what the study uses the metric playing it for
    "copy": "the copy rate: the frontier's copy axis, Δcopy against the baseline, the questions, "
            "the detection target `copies`, the copy audit figure",
    "alignment": "the alignment axis: the frontier, Δacc. against the baseline, equal alignment",
}


def wilson_pool(per_seed: Sequence[np.ndarray]) -> dict[str, Any]:
  """The default pooling of a per-sample flag: k and n summed over the seeds (each seed's flags on
  the rows of the group where the metric applies), a 95% Wilson interval, and each seed's own
  rate (None: no rows in that seed) with their mean ± sd."""
  k, n = int(sum(f.sum() for f in per_seed)), int(sum(len(f) for f in per_seed))
  ci = stats.wilson_interval(k, n)
  rates = [float(f.mean()) if len(f) else None for f in per_seed]
  present = [r for r in rates if r is not None]
  spread = stats.seed_summary(present) if present else None
  return dict(k=k, n=n, rate=k / n if n else None, ci=[ci.low, ci.high], per_seed=rates,
              seed_mean=spread.mean if spread else None, seed_std=spread.std if spread else None)


def _everywhere(ctx: Context) -> np.ndarray:
  return np.ones(len(ctx.conditions), bool)


def _always(ctx: Context) -> bool:
  return True


@dataclasses.dataclass(frozen=True)
class Metric:
  """One per-sample metric, declared once: results.json, the summary, report.md and the figures
  read everything about it from here.

  Attributes:
    name: the registry key: its name in results.json (`flags`, `applies`, `groups`, `metrics`).
    description: what it measures, one line (results.json `metrics`, docs/metrics.md).
    fn: (context, measurements) → [N] bool, one flag per sample.
    applies: context → [N] bool, the rows it is defined on (elsewhere the flag is False and no
      rate counts the row).
    needs: context → whether the context has its inputs (a classifier, a copy calibration);
      False leaves the metric out of that study.
    column: its header in report.md's tables (None: results.json only).
    group: the condition group its column and summary rate are pooled over ("all", "memorized",
      "other", …).
    role: what the study uses it for, a key of ROLES (at most one metric per role).
    pool: how per-seed flags ([n_s] bool per seed, restricted to `group` and `applies`) become the
      reported estimate; a dict with at least `rate` and `ci`.
    image: for a copy flag, the key of results.json `scores` naming the training image a flagged
      sample copies; the figures frame its samples and show them beside that image.
    score: the key of results.json `scores` that the flag thresholds (shown by the copy audit).
  """

  name: str
  description: str
  fn: Callable[[Context, Measured], np.ndarray]
  applies: Callable[[Context], np.ndarray] = _everywhere
  needs: Callable[[Context], bool] = _always
  column: str | None = None
  group: str = "all"
  role: str | None = None
  pool: Callable[[Sequence[np.ndarray]], dict[str, Any]] = wilson_pool
  image: str | None = None
  score: str | None = None

  def __post_init__(self):
    if self.role is not None and self.role not in ROLES:
      raise ValueError(f"Metric {self.name!r}: role {self.role!r} is not one of "
                       f"{', '.join(ROLES)}; leave role=None or add the role to ROLES.")


def registry(*metrics: Metric) -> dict[str, Metric]:
  """name → metric in the given order (report.md's column order). Raises ValueError when a name or
  a role is given twice."""
  out: dict[str, Metric] = {}
  roles: dict[str, str] = {}
  for m in metrics:
    if m.name in out:
      raise ValueError(f"Metric {m.name!r} is registered twice; give each metric one name.")
    if m.role is not None and m.role in roles:
      raise ValueError(f"Metrics {roles[m.role]!r} and {m.name!r} both have role {m.role!r}; "
                       f"a role is played by one metric.")
    out[m.name] = m
    if m.role is not None:
      roles[m.role] = m.name
  return out


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


def _requests_a_class(ctx: Context) -> np.ndarray:
  return ctx.conditions.requested_class >= 0


def _calibrated(ctx: Context) -> bool:
  return ctx.calibration is not None


def _has_classifier(ctx: Context) -> bool:
  return ctx.classifier is not None


METRICS: dict[str, Metric] = registry(
    Metric("copy", "primary: NCC with the named training image, best over ±1-px shifts, above "
                   "that image's threshold at 1% FPR on real held-out images of its class",
           _copy, applies=_names_an_image, needs=_calibrated, column="copy, memorized",
           group="memorized", role="copy", image="target", score="target_ncc_shift"),
    Metric("copy_any", "NCC with the most correlated training image (±1-px shifts) above its "
                       "class's threshold at 1% FPR on held-out images",
           _copy_any, needs=_calibrated, column="copy of any image, other", group="other",
           image="ncc_shift_index", score="ncc_shift"),
    Metric("copy_ratio", "ratio test ‖x−NN₁‖/‖x−NN₂‖ < 1/3 against the de-duplicated training set",
           _copy_ratio, column="ratio test, memorized", group="memorized"),
    Metric("copy_ratio_target", "ratio-test copy whose NN₁ is the image the condition names",
           _copy_ratio_target, group="memorized"),
    Metric("copy_ratio_duplicated", "ratio-test copy whose NN₁ is a duplicated image",
           _copy_ratio_duplicated, group="memorized"),
    Metric("carlini_below_0_5", "Carlini et al.'s normalised distance < 0.5", _carlini,
           group="memorized"),
    Metric("class_correct", "the evaluation classifier's class is the requested one",
           _class_correct, applies=_requests_a_class, needs=_has_classifier, column="class acc.",
           role="alignment"),
)


def by_role(role: str) -> Metric:
  """The registered metric playing `role` (a key of ROLES). Raises KeyError naming the roles."""
  for m in METRICS.values():
    if m.role == role:
      return m
  raise KeyError(f"No registered metric has role {role!r} (roles played: "
                 f"{', '.join(m.role for m in METRICS.values() if m.role) or 'none'}); register "
                 f"one with Metric(..., role={role!r}) in minidiff/study/evaluation.py METRICS.")


def columns() -> list[Metric]:
  """The metrics with a report column, in registry order."""
  return [m for m in METRICS.values() if m.column is not None]


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
  """{k, n, rate, ci: [low, high]} of `flag` over the rows `where` (95% Wilson interval): the raw
  per-seed counts results.json keeps for every metric and group."""
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


# --- results.json written by earlier versions: read in this one place -------------------------

_RENAMED_WITH_CALIBRATION = {  # before the calibrated copy metric: their name → the registry's
    "copy": "copy_ratio", "copy_target": "copy_ratio_target", "copy_duplicated": "copy_ratio_duplicated"}


@dataclasses.dataclass(frozen=True)
class Stored:
  """A results.json's per-sample flags under the registry's names, and who plays each role."""

  results: dict  # the results dict, its flags and `applies` masks under the registry's names
  roles: dict[str, str]  # role → metric name in this file

  def role(self, role: str) -> tuple[str, str]:
    """(group, metric) of the metric playing `role` in this file."""
    if role not in self.roles:
      raise KeyError(f"No metric plays role {role!r} in this results file (roles: "
                     f"{', '.join(self.roles) or 'none'}).")
    name = self.roles[role]
    return METRICS[name].group, name


def stored_metrics(results: dict) -> Stored:
  """results.json read against the registry; the input is not modified. Older files:

  * written before the calibrated copy metric (no arm has `copy_ratio`): their `copy`,
    `copy_target`, `copy_duplicated` are today's `copy_ratio`, `copy_ratio_target`,
    `copy_ratio_duplicated`, and their copy rate (role "copy") was the ratio test;
  * written before the `applies` masks: every metric counted every row but class accuracy, which
    counted the rows that request a class (masks are filled in to say so).
  """
  before = not any("copy_ratio" in arm["flags"] for s in results["seeds"]
                   for arm in s["arms"].values())
  rename = _RENAMED_WITH_CALIBRATION if before else {}
  seeds = []
  for s in results["seeds"]:
    arms = {label: dict(arm, flags={rename.get(k, k): v for k, v in arm["flags"].items()})
            for label, arm in s["arms"].items()}
    seed = dict(s, arms=arms)
    if "applies" in s:
      seed["applies"] = {rename.get(k, k): v for k, v in s["applies"].items()}
    else:
      names = dict.fromkeys(k for arm in arms.values() for k in arm["flags"])
      n = len(next(iter(next(iter(arms.values()))["flags"].values())))
      requested = "".join("1" if c >= 0 else "0"
                          for c in s["conditions"].get("requested_class", [0] * n))
      seed["applies"] = {k: requested if k == "class_correct" else "1" * n for k in names}
    seeds.append(seed)
  roles = {m.role: m.name for m in METRICS.values() if m.role is not None}
  if before:
    roles["copy"] = _RENAMED_WITH_CALIBRATION["copy"]
  return Stored(dict(results, seeds=seeds), roles)


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


# --- per-arm scores: detection from the guidance distances --------------------------------------

@dataclasses.dataclass(frozen=True)
class ArmScore:
  """A per-sample score of an arm from its recorded guidance distances, tested as a detector of
  every DETECTION_TARGETS flag (Wen et al.'s AUC, TPR at 1% FPR, best-threshold accuracy).

  Attributes:
    name: the key in results.json `detection.figures.<target>`.
    description: what the score is.
    label: its name in report.md's detection table.
    fn: (d_eps, d_x0), each [S, N] per-step distances (NaN: the arm skipped a branch) → [N].
    auc: the targets whose bare AUC results.json also keeps, as `auc_<name>_<target>`.
  """

  name: str
  description: str
  label: str
  fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
  auc: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DetectionTarget:
  """What the arm scores are asked to detect: a per-sample flag of the arm.

  Attributes:
    name: the key in results.json `detection.figures` (and the `auc_<score>_<name>` suffix).
    label: its name in report.md's detection table.
    short: its suffix in the AUC-only table of older results ("" for none).
    positives: (context, the arm's metric flags) → [N] bool, or None when the arm lacks it.
  """

  name: str
  label: str
  short: str
  positives: Callable[[Context, Mapping[str, np.ndarray]], np.ndarray | None]


def _memorized(ctx: Context, arm_flags: Mapping[str, np.ndarray]) -> np.ndarray:
  return np.asarray(ctx.conditions.groups["memorized"], bool)


def _copies(ctx: Context, arm_flags: Mapping[str, np.ndarray]) -> np.ndarray | None:
  return arm_flags.get(by_role("copy").name)


DETECTION_SCORES: dict[str, ArmScore] = {s.name: s for s in (
    ArmScore("mean_d_eps", "mean over steps of ‖ε_c − ε_u‖₂ (Wen et al.)", "mean d_t",
             lambda d_eps, d_x0: d_eps.mean(axis=0), auc=("memorized", "copies")),
    ArmScore("first_d_eps", "‖ε_c − ε_u‖₂ at the first step", "first-step d_t",
             lambda d_eps, d_x0: d_eps[0], auc=("memorized",)),
    ArmScore("mean_d_x0", "mean over steps of ‖x̂₀_c − x̂₀_u‖₂", "mean ‖x̂₀_c − x̂₀_u‖₂",
             lambda d_eps, d_x0: d_x0.mean(axis=0)),
    ArmScore("first_d_x0", "‖x̂₀_c − x̂₀_u‖₂ at the first step (a constant multiple of "
                           "first_d_eps: same ranks)", "first-step ‖x̂₀_c − x̂₀_u‖₂",
             lambda d_eps, d_x0: d_x0[0]),
)}
DETECTION_TARGETS: dict[str, DetectionTarget] = {t.name: t for t in (
    DetectionTarget("memorized", "memorized vs other conditions", "", _memorized),
    DetectionTarget("copies", "copies vs non-copies", "copies", _copies),
)}


def detection_figures(d_eps: np.ndarray, d_x0: np.ndarray, targets: Mapping[str, np.ndarray]
                      ) -> dict[str, dict[str, dict[str, float] | None]]:
  """Wen et al.'s detection figures (AUC, TPR at 1% FPR, best-threshold accuracy) of every score of
  DETECTION_SCORES, for every named target ([N] bool, e.g. memorized conditions or copies).

  d_eps, d_x0: [S, N] per-step distances. A score/target pair is None where a group is empty or a
  score is missing (NaN: the arm skipped a branch).
  """
  from minidiff.metrics import detection
  scores = {name: s.fn(d_eps, d_x0) for name, s in DETECTION_SCORES.items()}
  out: dict[str, dict[str, dict[str, float] | None]] = {}
  for target, positive in targets.items():
    positive = np.asarray(positive, bool)
    out[target] = {}
    for name, s in scores.items():
      ok = positive.any() and not positive.all() and np.isfinite(s).all()
      out[target][name] = detection.detection_figures(s, positive) if ok else None
  return out


def detection(ctx: Context, d_eps: np.ndarray, d_x0: np.ndarray,
              arm_flags: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """An arm's results.json `detection` block: `auc_<score>_<target>` for each score's `auc`
  targets, and `figures` (target → score → figures) for every target the arm has."""
  targets = {}
  for name, t in DETECTION_TARGETS.items():
    positives = t.positives(ctx, arm_flags)
    if positives is not None:
      targets[name] = np.asarray(positives, bool)
  out: dict[str, Any] = {}
  for target, positive in targets.items():
    for s in DETECTION_SCORES.values():
      if target in s.auc:
        out[f"auc_{s.name}_{target}"] = detection_auc(s.fn(d_eps, d_x0), positive)
  out["figures"] = detection_figures(d_eps, d_x0, targets)
  return out
