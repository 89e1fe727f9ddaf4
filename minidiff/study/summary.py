"""From the per-seed, per-sample flags of results.json to the study's statistics.

Pure functions of the results dict, so a report is regenerated from a committed results.json alone
(`python -m minidiff.study.report RESULTS.json`):
  * per arm: the copy rate on memorized conditions and the alignment (class accuracy), pooled over
    seeds (Wilson interval) and per seed (mean ± spread);
  * per arm vs the baseline arm: the paired difference (Newcombe interval) and exact McNemar p,
    per seed and pooled over seeds, for copying and for alignment;
  * the memorization–alignment frontier: per family its Pareto front and, at alignment within
    `tolerance` of the best CFG arm, its least-copying arm, paired against CFG's at that alignment;
  * the clustered statistics (`minidiff.study.clustered`): intervals from a bootstrap over
    memorized images × noises, sign-flip p-values over noises, per-seed directions, and every arm
    against the CFG curve at equal alignment; Holm-adjusted within each question (`questions`).

Which metric is the copy rate and which the alignment is the registry's roles
(`minidiff.study.evaluation.METRICS`); every registered metric the file holds is also pooled over
its own group (`metrics`). Older results.json files are read through `evaluation.stored_metrics`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from minidiff.metrics import stats
from minidiff.study import clustered, evaluation, frontier

# (group, metric) of the registry's copy and alignment roles, for scripts that read current
# results.json files; `summarize` resolves the roles per file (`evaluation.stored_metrics`).
COPY = (evaluation.by_role("copy").group, evaluation.by_role("copy").name)
ALIGNMENT = (evaluation.by_role("alignment").group, evaluation.by_role("alignment").name)
QUESTIONS = {  # name → what is tested; Holm's correction runs within each
    "copy_vs_baseline": "does the arm copy more or less than the baseline (memorized conditions)?",
    "alignment_vs_baseline": "is the arm's class accuracy different from the baseline's?",
    "copy_at_equal_alignment": "does the arm copy less than the CFG curve at its own alignment?",
}


def choose_baseline(arms: Sequence[tuple[str, str, Any]], requested: str | None) -> str:
  """The arm every other is paired with: `requested`, else the cfg-family arm of largest w."""
  labels = [a[0] for a in arms]
  if requested is not None:
    if requested not in labels:
      raise ValueError(f"--baseline={requested!r} is not one of the arms: {', '.join(labels)}.")
    return requested
  cfg = [(getattr(s, "w", 0.0), label) for label, family, s in arms if family == "cfg"]
  return max(cfg)[1] if cfg else labels[0]


def flags_of(seed: dict, label: str, group: str, metric: str) -> np.ndarray:
  """[n] bool: `metric` per sample of `label` in one seed, restricted to `group`'s rows and to the
  rows where it applies (the seed's `applies` mask; every row without one, as
  `evaluation.stored_metrics` fills them in for older files)."""
  arm = seed["arms"][label]
  if metric not in arm["flags"]:
    return np.zeros(0, bool)
  flags = np.frombuffer(arm["flags"][metric].encode(), np.uint8) == ord("1")
  if group == "all":
    where = np.ones(len(flags), bool)
  else:
    where = np.frombuffer(seed["conditions"]["groups_mask"][group].encode(), np.uint8) == ord("1")
  mask = seed.get("applies", {}).get(metric)
  applies = np.ones(len(flags), bool) if mask is None else (
      np.frombuffer(mask.encode(), np.uint8) == ord("1"))
  return flags[where & applies]


def pooled_rate(results: dict, label: str, group: str, metric: str) -> dict[str, Any]:
  """`metric` of arm `label` on `group`, pooled over the seeds as the metric declares (default: k
  and n summed, Wilson interval, with the per-seed rates)."""
  per_seed = [flags_of(s, label, group, metric) for s in results["seeds"]]
  registered = evaluation.METRICS.get(metric)
  return (registered.pool if registered else evaluation.wilson_pool)(per_seed)


def paired(results: dict, label: str, baseline: str, group: str, metric: str) -> dict[str, Any]:
  """arm − baseline on the same noises: pooled over seeds and per seed (diff, interval, McNemar p)."""
  pairs = [(flags_of(s, baseline, group, metric), flags_of(s, label, group, metric))
           for s in results["seeds"]]
  pairs = [p for p in pairs if len(p[0])]
  if not pairs:
    return {}
  pooled = stats.pooled_paired_difference(pairs)
  d = pooled.pooled
  return dict(diff=d.diff, ci=[d.interval.low, d.interval.high], p=d.p_value,
              only_baseline=d.b, only_arm=d.c, n=d.n,
              per_seed=[dict(diff=s.diff, ci=[s.interval.low, s.interval.high], p=s.p_value)
                        for s in pooled.per_seed])


def fd_summary(results: dict, label: str) -> dict[str, Any] | None:
  values = [s["arms"][label]["fd"] for s in results["seeds"] if "fd" in s["arms"][label]]
  if not values:
    return None
  floors = [s["fd_floor"]["mean"] for s in results["seeds"] if "fd_floor" in s]
  return dict(mean=float(np.mean([v["value"] for v in values])), per_seed=values,
              floor_mean=float(np.mean(floors)) if floors else None)


def summarize(results: dict, *, tolerance: float = 0.03) -> dict[str, Any]:
  """Every arm's pooled rates (the copy and alignment roles, and every registered metric the file
  holds on its own group), paired tests against the baseline, and the frontier (JSON-ready)."""
  stored = evaluation.stored_metrics(results)
  view = stored.results
  copy, alignment = stored.role("copy"), stored.role("alignment")
  present = dict.fromkeys(k for s in view["seeds"] for arm in s["arms"].values() for k in arm["flags"])
  held = [m for m in evaluation.METRICS.values() if m.name in present]
  baseline = view["baseline"]
  u = clustered.units(view)
  arms = {}
  for a in view["arms"]:
    label = a["label"]
    arms[label] = dict(
        family=a["family"],
        copy_memorized=pooled_rate(view, label, *copy),
        alignment=pooled_rate(view, label, *alignment),
        metrics={m.name: pooled_rate(view, label, m.group, m.name) for m in held},
        fd=fd_summary(view, label),
        vs_baseline=dict(copy=paired(view, label, baseline, *copy),
                         alignment=paired(view, label, baseline, *alignment)),
        clustered=dict(copy_memorized=clustered.rate(view, u, label, *copy),
                       alignment=clustered.rate(view, u, label, *alignment),
                       copy_vs_baseline=(clustered.paired(view, u, label, baseline, *copy)
                                         if label != baseline else None),
                       alignment_vs_baseline=(clustered.paired(view, u, label, baseline, *alignment)
                                              if label != baseline else None)))
  out = dict(baseline=baseline, tolerance=tolerance, n_seeds=len(view["seeds"]), arms=arms,
             roles=dict(stored.roles),
             copy_metric=f"{copy[1]}: {evaluation.METRICS[copy[1]].description}",
             units=dict(clusters=int(len(np.unique(u.clusters))),
                        memorized_clusters=int(len(np.unique(u.clusters[u.groups["memorized"]])))
                        if "memorized" in u.groups else None,
                        bootstrap_resamples=int(u.weights.shape[0])))
  out["frontier"] = _frontier(view, arms, tolerance, copy=copy, alignment=alignment)
  out["equal_alignment"] = _equal_alignment(view, u, copy=copy, alignment=alignment)
  out["questions"] = _questions(arms, out["equal_alignment"])
  return out


def _cfg_curve(results: dict) -> list[str]:
  return [a["label"] for a in results["arms"] if a["family"] == "cfg"]


def _equal_alignment(results: dict, u: clustered.Units, *, copy: tuple[str, str],
                     alignment: tuple[str, str]) -> dict[str, Any]:
  """Every arm outside the CFG family against the CFG curve at its own alignment."""
  cfg = _cfg_curve(results)
  out = {}
  for a in results["arms"]:
    if a["family"] != "cfg":
      out[a["label"]] = clustered.equal_alignment(results, u, a["label"], cfg, copy=copy,
                                                  alignment=alignment)
  return dict(rule="CFG family's copy rate (memorized conditions), piecewise linear in class "
                   "accuracy over its arms sorted by accuracy (arms of equal accuracy: the least "
                   "copying), at the arm's accuracy; Δ = arm − "
                   "curve, two-stage cluster-bootstrap interval and p", cfg_arms=cfg, arms=out)


def _questions(arms: dict, equal: dict) -> dict[str, Any]:
  """Each question's tests, with Holm-adjusted p-values within the question."""
  out = {}
  for q, key in (("copy_vs_baseline", "copy_vs_baseline"),
                 ("alignment_vs_baseline", "alignment_vs_baseline")):
    tests = {label: r["clustered"][key] for label, r in arms.items() if r["clustered"][key]}
    adjusted = stats.holm([t["p"] for t in tests.values()])
    out[q] = dict(question=QUESTIONS[q], n_tests=len(tests),
                  tests={label: dict(diff=t["diff"], ci=t["ci"], p=t["p"], p_holm=ph,
                                     directions=t["directions"])
                         for (label, t), ph in zip(tests.items(), adjusted)})
  tests = {label: t for label, t in equal["arms"].items() if t and t.get("p") is not None}
  adjusted = stats.holm([t["p"] for t in tests.values()])
  out["copy_at_equal_alignment"] = dict(
      question=QUESTIONS["copy_at_equal_alignment"], n_tests=len(tests),
      tests={label: dict(diff=t["diff"], ci=t["ci"], p=t["p"], p_holm=ph,
                         alignment=t["alignment"], cfg_copy_at_alignment=t["cfg_copy_at_alignment"],
                         directions=t["directions"])
             for (label, t), ph in zip(tests.items(), adjusted)})
  return out


def _frontier(results: dict, arms: dict, tolerance: float, *, copy: tuple[str, str],
              alignment: tuple[str, str]) -> dict[str, Any]:
  points = [frontier.ArmPoint(label, r["family"], r["copy_memorized"]["rate"], r["alignment"]["rate"])
            for label, r in arms.items()
            if r["copy_memorized"]["rate"] is not None and r["alignment"]["rate"] is not None]
  if not points or not any(p.family == "cfg" for p in points):
    return dict(reference=None, headline=[], pareto={})
  families = list(dict.fromkeys(p.family for p in points))
  pareto = {f: [p.name for p in frontier.pareto_front([q for q in points if q.family == f])]
            for f in families}
  cfg_points = [p for p in points if p.family == "cfg" and p.name not in ("none", "conditional")]
  pool = cfg_points or [p for p in points if p.family == "cfg"]  # CFG proper: w > 1
  reference = frontier.reference_alignment(pool, family="cfg")
  best = frontier.best_at_alignment(points, reference_alignment=reference, tolerance=tolerance,
                                    families=families)
  cfg_best = best.get("cfg")
  headline = []
  for family in families:
    p = best[family]
    row = dict(family=family, arm=p.name if p else None)
    if p is not None:
      row.update(copy=arms[p.name]["copy_memorized"], alignment=arms[p.name]["alignment"],
                 fd=arms[p.name]["fd"])
      if cfg_best is not None and p.name != cfg_best.name:
        row["vs_cfg"] = dict(arm=cfg_best.name,
                             copy=paired(results, p.name, cfg_best.name, *copy),
                             alignment=paired(results, p.name, cfg_best.name, *alignment))
    headline.append(row)
  return dict(reference=dict(alignment=reference, tolerance=tolerance,
                             arm=max(pool, key=lambda q: q.alignment).name),
              headline=headline, pareto=pareto)
