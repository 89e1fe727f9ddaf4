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

The copy flag is `copy` (the calibrated primary metric) where results.json has it; results
written before it existed fall back to the ratio test under its old name.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from minidiff.metrics import stats
from minidiff.study import clustered, frontier

COPY = ("memorized", "copy")  # (group, metric): the copy rate on memorized conditions
ALIGNMENT = ("all", "class_correct")  # alignment: class accuracy over every sample with a class
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
  """[n] bool: `metric` per sample of `label` in one seed, restricted to `group`'s rows."""
  arm = seed["arms"][label]
  if metric not in arm["flags"]:
    return np.zeros(0, bool)
  flags = np.frombuffer(arm["flags"][metric].encode(), np.uint8) == ord("1")
  groups = seed["conditions"]["groups_mask"] if "groups_mask" in seed["conditions"] else None
  if group == "all":
    where = np.ones(len(flags), bool)
  else:
    where = np.frombuffer(groups[group].encode(), np.uint8) == ord("1")
  if metric in seed.get("applies", {}):
    applies = np.frombuffer(seed["applies"][metric].encode(), np.uint8) == ord("1")
  elif metric == "class_correct":  # results.json written before the `applies` masks
    applies = np.asarray(seed["conditions"]["requested_class"]) >= 0
  else:
    applies = np.ones(len(flags), bool)
  return flags[where & applies]


def pooled_rate(results: dict, label: str, group: str, metric: str) -> dict[str, Any]:
  """A rate pooled over seeds (k and n summed; Wilson interval) with the per-seed rates."""
  per_seed = [flags_of(s, label, group, metric) for s in results["seeds"]]
  k, n = int(sum(f.sum() for f in per_seed)), int(sum(len(f) for f in per_seed))
  ci = stats.wilson_interval(k, n)
  rates = [float(f.mean()) if len(f) else None for f in per_seed]  # None: no rows in that seed
  present = [r for r in rates if r is not None]
  spread = stats.seed_summary(present) if present else None
  return dict(k=k, n=n, rate=k / n if n else None, ci=[ci.low, ci.high], per_seed=rates,
              seed_mean=spread.mean if spread else None, seed_std=spread.std if spread else None)


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


def _calibrated(results: dict) -> bool:
  return all("copy_any" in s["arms"][a["label"]]["flags"] for s in results["seeds"]
             for a in results["arms"])


def summarize(results: dict, *, tolerance: float = 0.03) -> dict[str, Any]:
  """Every arm's pooled rates, paired tests against the baseline, and the frontier (JSON-ready)."""
  baseline = results["baseline"]
  calibrated = _calibrated(results)
  ratio = "copy_ratio" if calibrated else "copy"
  other = ("other", "copy_any") if calibrated else ("other", "copy")
  u = clustered.units(results)
  arms = {}
  for a in results["arms"]:
    label = a["label"]
    arms[label] = dict(
        family=a["family"],
        copy_memorized=pooled_rate(results, label, *COPY),
        copy_other=pooled_rate(results, label, *other),
        copy_any_memorized=pooled_rate(results, label, "memorized", "copy_any" if calibrated
                                       else "copy"),
        copy_ratio_memorized=pooled_rate(results, label, "memorized", ratio),
        copy_target=pooled_rate(results, label, "memorized",
                                "copy" if calibrated else "copy_target"),
        alignment=pooled_rate(results, label, *ALIGNMENT),
        alignment_memorized=pooled_rate(results, label, "memorized", "class_correct"),
        fd=fd_summary(results, label),
        vs_baseline=dict(copy=paired(results, label, baseline, *COPY),
                         alignment=paired(results, label, baseline, *ALIGNMENT)),
        clustered=dict(copy_memorized=clustered.rate(results, u, label, *COPY),
                       alignment=clustered.rate(results, u, label, *ALIGNMENT),
                       copy_vs_baseline=(clustered.paired(results, u, label, baseline, *COPY)
                                         if label != baseline else None),
                       alignment_vs_baseline=(clustered.paired(results, u, label, baseline,
                                                               *ALIGNMENT)
                                              if label != baseline else None)))
  out = dict(baseline=baseline, tolerance=tolerance, n_seeds=len(results["seeds"]), arms=arms,
             copy_metric="copy (calibrated, primary)" if calibrated else "copy (ratio test)",
             units=dict(clusters=int(len(np.unique(u.clusters))),
                        memorized_clusters=int(len(np.unique(u.clusters[u.groups["memorized"]])))
                        if "memorized" in u.groups else None,
                        bootstrap_resamples=int(u.weights.shape[0])))
  out["frontier"] = _frontier(results, arms, tolerance)
  out["equal_alignment"] = _equal_alignment(results, u)
  out["questions"] = _questions(arms, out["equal_alignment"])
  return out


def _cfg_curve(results: dict) -> list[str]:
  return [a["label"] for a in results["arms"] if a["family"] == "cfg"]


def _equal_alignment(results: dict, u: clustered.Units) -> dict[str, Any]:
  """Every arm outside the CFG family against the CFG curve at its own alignment."""
  cfg = _cfg_curve(results)
  out = {}
  for a in results["arms"]:
    if a["family"] != "cfg":
      out[a["label"]] = clustered.equal_alignment(results, u, a["label"], cfg, copy=COPY,
                                                  alignment=ALIGNMENT)
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


def _frontier(results: dict, arms: dict, tolerance: float) -> dict[str, Any]:
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
                             copy=paired(results, p.name, cfg_best.name, *COPY),
                             alignment=paired(results, p.name, cfg_best.name, *ALIGNMENT))
    headline.append(row)
  return dict(reference=dict(alignment=reference, tolerance=tolerance,
                             arm=max(pool, key=lambda q: q.alignment).name),
              headline=headline, pareto=pareto)
