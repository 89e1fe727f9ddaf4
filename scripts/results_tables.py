"""The tables of docs/results/README.md, regenerated from the committed results.json files.

  python scripts/results_tables.py docs/results/mnist_dup/results.json \
      [--control docs/results/mnist_nodup_control/results.json]

Prints Markdown: the frontier headline and the clustered questions (Holm within each), CFG
against conditional sampling, static against opposite guidance at each τ, the dynamic variants
(transition per seed), and the d_t detection AUC beside the control model's. Copies are counted
with the results' own copy flag (the calibrated metric where results.json has it).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff.study import clustered, report, summary  # noqa: E402


def _load(path: str) -> dict:
  with open(path) as f:
    results = json.load(f)
  results["summary"] = summary.summarize(results, tolerance=results["summary"]["tolerance"])
  return results


def _pair_row(results: dict, arm: str, against: str, units) -> str:
  s = results["summary"]["arms"]
  copy = clustered.paired(results, units, arm, against, *summary.COPY)
  align = clustered.paired(results, units, arm, against, *summary.ALIGNMENT)
  return (f"| `{arm}` − `{against}` | {report.pct_ci(s[arm]['copy_memorized'])} vs "
          f"{report.pct_ci(s[against]['copy_memorized'])} | {report.diff_cell(copy)} "
          f"({copy['directions'] if copy else '—'}) | {report.diff_cell(align)} |")


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("results")
  p.add_argument("--control", default=None)
  args = p.parse_args()
  r = _load(args.results)
  s = r["summary"]["arms"]
  labels = [a["label"] for a in r["arms"]]
  text = report.render(r)
  print(text[text.find("## Frontier"):text.find("## Every arm")])
  print("## CFG against conditional sampling (pooled over seeds)\n")
  print("Δ: clustered over memorized images × noises (bootstrap interval, sign-flip p over noises; "
        "per-seed directions in brackets); not Holm-corrected: exploratory beside the questions.\n")
  print("| pair | copy, memorized | Δcopy (pts) | Δacc. (pts) |\n|---|---|---|---|")
  units = clustered.units(r)
  for arm in [a for a in labels if a.startswith("cfg:")]:
    print(_pair_row(r, arm, "conditional", units))
  print("\n## Static (w_pre = 0) against opposite guidance (w_pre = −s) at each τ\n")
  print("| τ | static: copy / acc. | " + " | ".join(
      f"opposite s={x}: copy / acc." for x in ("1", "2", "4")) + " |\n|---|---|---|---|---|")
  taus = sorted({int(a.split("tau=")[1].split(":")[0]) for a in labels if a.startswith("static:")}
                | {int(a.split("tau=")[1].split(":")[0]) for a in labels if a.startswith("opposite:")})
  cell = lambda a: (f"{report.pct_ci(s[a]['copy_memorized'])} / {report.pct_ci(s[a]['alignment'])}"  # noqa: E731
                    if a in s else "—")
  for tau in taus:
    print(f"| {tau} | {cell(f'static:tau={tau}')} | " + " | ".join(
        cell(f"opposite:tau={tau}:s={x}") for x in ("1", "2", "4")) + " |")
  print("\n## Dynamic rules\n")
  print("| arm | copy, memorized | class acc. | transition t (fired), per seed |\n|---|---|---|---|")
  for a in [a for a in labels if a.startswith("dynamic")]:
    ts = []
    for x in r["seeds"]:
      tr = x["arms"][a]["transition"]
      ts.append("—" if tr["t_mean"] is None else
                f"{tr['t_mean']:.0f} ± {tr['t_std']:.0f} ({100 * tr['fired']:.0f}%)")
    print(f"| `{a}` | {report.pct_ci(s[a]['copy_memorized'])} | {report.pct_ci(s[a]['alignment'])} | "
          f"{' / '.join(ts)} |")
  print("\n## Detection: AUC of mean d_t, memorized vs other conditions\n")
  print("| model | arm | AUC per seed |\n|---|---|---|")
  runs = [("duplicated (main)", r)] + ([("control, no duplication", _load(args.control))]
                                        if args.control else [])
  for name, res in runs:
    base = res["summary"]["baseline"]
    aucs = [x["arms"][base]["detection"]["auc_mean_d_eps_memorized"] for x in res["seeds"]]
    print(f"| {name} | `{base}` | {', '.join(report.cell(a) for a in aucs)} |")


if __name__ == "__main__":
  main()
