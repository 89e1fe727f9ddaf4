"""The tables of docs/results/README.md, regenerated from the committed results.json files.

  python scripts/results_tables.py docs/results/mnist_dup/results.json \
      [--control docs/results/mnist_nodup_control/results.json]

Prints Markdown: the frontier headline, CFG against conditional sampling, static against opposite
guidance at each τ, the dynamic variants, and the d_t detection AUC beside the control model's.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff.study import report, summary  # noqa: E402


def _load(path: str) -> dict:
  with open(path) as f:
    results = json.load(f)
  results["summary"] = summary.summarize(results, tolerance=results["summary"]["tolerance"])
  return results


def _pair_row(results: dict, arm: str, against: str) -> str:
  s = results["summary"]["arms"]
  copy = summary.paired(results, arm, against, *summary.COPY)
  align = summary.paired(results, arm, against, *summary.ALIGNMENT)
  return (f"| `{arm}` − `{against}` | {report.pct_ci(s[arm]['copy_memorized'])} vs "
          f"{report.pct_ci(s[against]['copy_memorized'])} | {report.diff_cell(copy)} | "
          f"{report.diff_cell(align)} |")


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
  print("| pair | copy, memorized | Δcopy (pts) | Δacc. (pts) |\n|---|---|---|---|")
  for arm in [a for a in labels if a.startswith("cfg:")]:
    print(_pair_row(r, arm, "conditional"))
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
  print("| arm | copy, memorized | class acc. | transition t (fired), seed 0 |\n|---|---|---|---|")
  for a in [a for a in labels if a.startswith("dynamic")]:
    tr = r["seeds"][0]["arms"][a]["transition"]
    t = "—" if tr["t_mean"] is None else f"{tr['t_mean']:.0f} ± {tr['t_std']:.0f} ({100 * tr['fired']:.0f}%)"
    print(f"| `{a}` | {report.pct_ci(s[a]['copy_memorized'])} | {report.pct_ci(s[a]['alignment'])} | {t} |")
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
