"""report.md and the frontier plot of a study, written from its results.json alone.

  python -m minidiff.study.report runs/mnist_dup/study/results.json   # regenerate both

The report leads with the frontier table (per family, the least-copying arm at alignment within a
few points of the best CFG arm, paired against CFG there) and its plot, then every arm's pooled
rates with intervals and paired tests against the baseline, the per-seed values, detection, and
the figures. Its metric columns, their headers and the detection table's rows come from the
metric registry (`minidiff.study.evaluation`): one column per registered metric with a `column`
that the results hold, in registry order.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from minidiff.metrics import stats
from minidiff.study import evaluation
from minidiff.study import summary as summary_lib

M = stats.MINUS


def cell(v: Any, digits: int = 3) -> str:
  """A report table cell: — for None, else 3 significant digits."""
  if v is None:
    return "—"
  return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def pct_ci(r: dict | None) -> str:
  """'47.0% [40.2, 53.9]' from a {rate, ci} dict."""
  if not r or r.get("rate") is None:
    return "—"
  return f"{100 * r['rate']:.1f}% [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]"


def diff_cell(d: dict | None) -> str:
  """'−22.0 [−29.1, −15.0] p=3e-06' (percentage points) from a paired dict."""
  if not d:
    return "—"
  sign = lambda x: f"{100 * x:+.1f}".replace("-", M)  # noqa: E731
  return f"{sign(d['diff'])} [{sign(d['ci'][0])}, {sign(d['ci'][1])}] {stats.format_p(d['p'])}"


def ci_only(r: dict | None) -> str:
  """'[40.2, 53.9]' from a {ci} dict (percent)."""
  if not r or r.get("ci") is None or r["ci"][0] is None:
    return "—"
  return f"[{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]"


def copy_sentence(seed: dict) -> str:
  """What `copy` means in this results file, with its thresholds."""
  cal = seed.get("copy_calibration")
  if not cal:
    return "Copy = ratio test ‖x−NN₁‖/‖x−NN₂‖ < 1/3 against the de-duplicated training set."
  p = cal["primary"]
  th = ", ".join(f"image {u}: {t:.3f}" for u, t in p["thresholds"].items())
  return (f"Copy (the primary metric, chosen by the known-answer benchmark in "
          f"docs/results/copy_benchmark/) = the sample's normalised cross-correlation with the "
          f"training image its condition names, best over ±1-pixel shifts, above that image's "
          f"threshold: the value at most {100 * p['fpr']:.0f}% of the real held-out images of its "
          f"class exceed ({th}; {cal['n_heldout']} held-out images in all). \"Copy of any image\" "
          f"asks the same of the most correlated training image with per-class thresholds; the "
          f"ratio test ‖x−NN₁‖/‖x−NN₂‖ < 1/3 is kept as a column. Per-sample scores are in "
          f"results.json (`scores`).")


def question_lines(s: dict) -> list[str]:
  """The clustered tests, one table per question, Holm-adjusted within it."""
  if "questions" not in s:
    return []
  u = s.get("units", {})
  lines = ["## Questions (clustered; Holm within each question)", "",
           f"Units: {u.get('memorized_clusters')} memorized image(s) and the noises within them "
           f"({u.get('clusters')} clusters in all: named images, or the requested class where a "
           f"condition names none); intervals from a two-stage bootstrap over clusters then "
           f"noises ({u.get('bootstrap_resamples')} resamples), p from sign flips over noises "
           f"(their differences summed over seeds), directions per seed. Equal alignment: "
           f"{s['equal_alignment']['rule']}.", ""]
  for q in s["questions"].values():
    lines += [f"**{q['question']}** ({q['n_tests']} tests)", "",
              "| arm | Δ (pts) | 95% (clustered) | p | p (Holm) | per seed |", "|---|---|---|---|---|---|"]
    for label, t in q["tests"].items():
      sign = lambda x: f"{100 * x:+.1f}".replace("-", M)  # noqa: E731
      lines.append(f"| `{label}` | {sign(t['diff'])} | [{sign(t['ci'][0])}, {sign(t['ci'][1])}] | "
                   f"{stats.format_p(t['p'])} | {stats.format_p(t['p_holm'])} | "
                   f"{t.get('directions', '—')} |")
    lines.append("")
  outside = [k for k, v in s["equal_alignment"]["arms"].items() if v and v.get("diff") is None]
  if outside:
    lines += ["Outside the CFG curve's alignment range (no comparison): "
              + ", ".join(f"`{k}`" for k in outside) + ".", ""]
  return lines


def fd_cell(fd: dict | None) -> str:
  if not fd:
    return "—"
  if len(fd["per_seed"]) == 1:
    v = fd["per_seed"][0]
    return f"{v['value']:.1f} [{v['ci'][0]:.1f}, {v['ci'][1]:.1f}]"
  return f"{fd['mean']:.1f} (mean of {len(fd['per_seed'])})"


def seed_cell(r: dict) -> str:
  if len([v for v in r["per_seed"] if v is not None]) < 2:
    return "—"
  return f"{100 * r['seed_mean']:.1f} ± {100 * r['seed_std']:.1f}"


def role_header(s: dict, role: str) -> str:
  """The column header of the metric playing `role` in a summary (its name if it has none)."""
  name = s["roles"][role]
  metric = evaluation.METRICS.get(name)
  return metric.column if metric is not None and metric.column else name


def metric_columns(s: dict) -> list[evaluation.Metric]:
  """The registered metrics with a column that some arm of the summary holds, in registry order."""
  held = {k for r in s["arms"].values() for k in r.get("metrics", {})}
  return [m for m in evaluation.columns() if m.name in held]


def _score_label(name: str) -> str:
  score = evaluation.DETECTION_SCORES.get(name)
  return score.label if score else name


def accuracy_cell(f: dict) -> str:
  """'0.915 (≥ 0.506)': best-threshold accuracy and its threshold ('call none' when calling every
  sample negative is best)."""
  where = "call none" if f["best_threshold"] is None else f"≥ {f['best_threshold']:.3g}"
  return f"{f['best_accuracy']:.3g} ({where})"


def detection_lines(seeds: list[dict], base: str) -> list[str]:
  """The detection section's body: Wen et al.'s figures (AUC, TPR at 1% FPR, best-threshold
  accuracy) per seed, statistic and target; results without `figures` (older results.json) get
  the AUC-only table."""
  det = [(x["seed"], x["arms"][base]["detection"]) for x in seeds]
  if not all("figures" in dd for _, dd in det):
    keys = [(f"auc_{sc.name}_{t.name}", sc.label + (f", {t.short}" if t.short else ""))
            for t in evaluation.DETECTION_TARGETS.values()
            for sc in evaluation.DETECTION_SCORES.values() if t.name in sc.auc]
    lines = ["AUC of d_t = ‖ε_c − ε_u‖₂ for memorized vs other conditions (and for copies vs "
             "non-copies), per seed.", "", "| seed | " + " | ".join(h for _, h in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for seed, dd in det:
      lines.append(f"| {seed} | " + " | ".join(cell(dd.get(k)) for k, _ in keys) + " |")
    return lines
  lines = ["Wen et al.'s figures for scores built from d_t = ‖ε_c − ε_u‖₂ (and the x̂₀ distance), "
           "per seed: a sample is called positive when its score is ≥ a threshold. TPR at 1% FPR "
           "allows ⌊0.01 n⁻⌋ negatives above the threshold (none with fewer than 100); the "
           "accuracy is that of the best threshold, shown beside it. — where a group is empty.", "",
           "| seed | target | statistic | AUC | TPR @ 1% FPR | best accuracy (threshold) |",
           "|---|---|---|---|---|---|"]
  for seed, dd in det:
    for target, by_stat in dd["figures"].items():
      for stat, f in by_stat.items():
        row = (["—"] * 3 if f is None else
               [cell(f["auc"]), cell(f["tpr_at_1pct_fpr"]), accuracy_cell(f)])
        t = evaluation.DETECTION_TARGETS.get(target)
        lines.append(f"| {seed} | {t.label if t else target} | {_score_label(stat)} | "
                     + " | ".join(row) + " |")
  return lines


def speed_cell(seeds: list[dict], label: str) -> str:
  """An arm's samples/s: the mean over seeds of what its sampling measured."""
  return f"{sum(x['arms'][label]['samples_per_s'] for x in seeds) / len(seeds):.1f}"


def render(results: dict) -> str:
  """The report's Markdown."""
  s = results["summary"]
  seeds = results["seeds"]
  o = results["options"]["sampling"]
  first = seeds[0]
  d = first["data"]
  n_mem, n_other = first["conditions"]["groups"]["memorized"], first["conditions"]["groups"]["other"]
  fd_floor = [x["fd_floor"] for x in seeds if "fd_floor" in x]
  runs = ", ".join(f"`{x['workdir']}` seed {x['seed']}, step {x['checkpoint_step']}" for x in seeds)
  lines = [
      f"# Memorization study ({results['kind']} conditions)", "",
      f"Command: `{results['command']}`", "",
      f"{len(seeds)} training seed(s) ({runs}); "
      f"{first['conditions']['n']} samples per arm and seed ({n_mem} on memorized conditions, "
      f"{n_other} on others), every arm from the same initial noises, conditions and keys; "
      f"{o['sampler']}-{o['num_steps']} (η = {o['eta']}, {o['spacing']} spacing). "
      f"Training set: {d['n_train']} examples, {d['n_unique']} unique, {d['n_duplicated']} "
      f"duplicated ×{d['dup_factor']} (memorized classes {d['memorized_classes']}). "
      f"EMA weights, effective decay {first['ema']['effective_decay']:.4f} at the checkpoint "
      f"(configured {first['ema']['decay']}; warm-up min(decay, (1+step)/(10+step))).", "",
      copy_sentence(first), "",
      "Alignment = class accuracy of a fixed evaluation classifier"
      + (f" (seed {first['classifier']['seed']}, held-out accuracy "
         f"{100 * first['classifier']['heldout_accuracy']:.1f}%)" if "classifier" in first else "")
      + ". Intervals in the tables are 95% (Wilson for rates, Newcombe for paired differences, "
      "bootstrap for FD), p the exact McNemar test on the same noises, pooling the seeds' samples "
      "as if independent; the clustered statistics and the questions below treat memorized images "
      "and noises as the units instead, and only they support a claim.", ""]
  if fd_floor:
    f0 = fd_floor[0]
    lines += [f"FD: penultimate classifier features against {f0['n_reference']} real held-out "
              f"images the diffusion model never trained on. Floor: {f0['n']} other real images "
              f"score FD {f0['mean']:.1f} (range {f0['min']:.1f}–{f0['max']:.1f}); differences "
              f"of that size mean nothing.", ""]
  fr = s["frontier"]
  if fr.get("reference"):
    ref = fr["reference"]
    lines += [
        "## Frontier: what copies least at equal alignment", "",
        f"Reference: the best CFG arm's alignment, `{ref['arm']}` at {100 * ref['alignment']:.1f}%. "
        f"Per family, the arm with the lowest copy rate on memorized conditions among arms whose "
        f"alignment is ≥ {100 * (ref['alignment'] - ref['tolerance']):.1f}% "
        f"(within {100 * ref['tolerance']:.0f} points), paired against CFG's arm at that alignment.", "",
        f"| family | arm | {role_header(s, 'copy')} | {role_header(s, 'alignment')} | FD | "
        "Δcopy vs CFG (pts) | Δacc. vs CFG (pts) | samples/s |",
        "|---|---|---|---|---|---|---|---|"]
    for row in fr["headline"]:
      if row["arm"] is None:
        lines.append(f"| {row['family']} | no arm within {100 * ref['tolerance']:.0f} points | — | — | — | — | — | — |")
        continue
      vs = row.get("vs_cfg", {})
      lines.append(f"| {row['family']} | `{row['arm']}` | {pct_ci(row['copy'])} | "
                   f"{pct_ci(row['alignment'])} | {fd_cell(row['fd'])} | {diff_cell(vs.get('copy'))} | "
                   f"{diff_cell(vs.get('alignment'))} | {speed_cell(seeds, row['arm'])} |")
    lines += ["", "![frontier](frontier.png)", ""]
  base = s["baseline"]
  lines += question_lines(s)
  lines += [
      f"## Every arm (paired against `{base}`)", ""]
  metric_cols = metric_columns(s)
  copy_name = s["roles"]["copy"]
  header = ["arm", "family"]
  for m in metric_cols:
    header += [m.column] + (["clustered 95%", "seeds mean ± sd"] if m.name == copy_name else [])
  header += ["FD", "Δcopy (pts)", "Δacc. (pts)", "transition t (fired)", "samples/s"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for a in results["arms"]:
    label = a["label"]
    r = s["arms"][label]
    tr = first["arms"][label]["transition"]
    trs = "—" if tr["t_mean"] is None else f"{tr['t_mean']:.0f} ± {tr['t_std']:.0f} ({100 * tr['fired']:.0f}%)"
    vs = r["vs_baseline"]
    row = [f"`{label}`", r["family"]]
    for m in metric_cols:
      row.append(pct_ci(r["metrics"].get(m.name)))
      if m.name == copy_name:
        row += [ci_only((r.get("clustered") or {}).get("copy_memorized")), seed_cell(r["copy_memorized"])]
    row += [fd_cell(r["fd"]), diff_cell(vs["copy"]) if label != base else "baseline",
            diff_cell(vs["alignment"]) if label != base else "baseline", trs, speed_cell(seeds, label)]
    lines.append("| " + " | ".join(row) + " |")
  if len(seeds) > 1:
    lines += ["", "## Per seed: copy on memorized conditions / class accuracy", "",
              "| arm | " + " | ".join(f"seed {x['seed']}" for x in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for a in results["arms"]:
      r = s["arms"][a["label"]]
      pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
      aligned = r["alignment"]["per_seed"] or [None] * len(seeds)
      lines.append(f"| `{a['label']}` | " + " | ".join(
          f"{pct(c)} / {pct(al)}" for c, al in zip(r["copy_memorized"]["per_seed"], aligned)) + " |")
  lines += ["", f"## Detection under `{base}`", ""] + detection_lines(seeds, base)
  figs = first.get("figures", {})
  if figs:
    lines += ["", f"## Figures (seed {first['seed']})", ""]
    for title, path in figs.items():
      lines += [f"### {title}", "", f"![{title}]({path})", ""]
  return "\n".join(lines) + "\n"


def write(results: dict, outdir: str, *, per_seed: bool = True) -> str:
  """Writes report.md and frontier.png into outdir and, with several seeds and `per_seed`, each
  seed's own results.json, report.md and frontier.png into outdir/seed_<i>/; returns report.md's path."""
  from minidiff.study import figures  # matplotlib only when writing
  if results["summary"]["frontier"].get("reference"):
    figures.frontier_plot(results, os.path.join(outdir, "frontier.png"))
  path = os.path.join(outdir, "report.md")
  with open(path, "w") as f:
    f.write(render(results))
  if per_seed and len(results["seeds"]) > 1:
    for i, seed in enumerate(results["seeds"]):
      sub = os.path.join(outdir, f"seed_{i}")
      os.makedirs(sub, exist_ok=True)
      one = dict(results, seeds=[dict(seed, figures={t: os.path.relpath(os.path.join(outdir, p), sub)
                                                     for t, p in seed.get("figures", {}).items()})])
      one["summary"] = summary_lib.summarize(one, tolerance=results["summary"]["tolerance"])
      with open(os.path.join(sub, "results.json"), "w") as f:
        json.dump(one, f, indent=1)
      write(one, sub, per_seed=False)
  return path


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: python -m minidiff.study.report RESULTS.json  (rewrites report.md and frontier.png "
          "beside it)", file=sys.stderr)
    return 2
  with open(argv[1]) as f:
    results = json.load(f)
  if results.get("version") != 2:
    print(f"{argv[1]}: results version {results.get('version')!r}; this report reads version 2.",
          file=sys.stderr)
    return 1
  results["summary"] = summary_lib.summarize(results, tolerance=results["summary"]["tolerance"])
  print(write(results, os.path.dirname(os.path.abspath(argv[1]))))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
