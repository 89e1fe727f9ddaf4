"""The copy-detection benchmark: every candidate copy score on known answers (results in --out).

  python scripts/copy_benchmark.py --workdir runs/mnist_dup --control runs/mnist_nodup_s0 \
      --study runs/mnist_dup/study --out docs/results/copy_benchmark/mnist_dup
  python scripts/copy_benchmark.py --config configs/mnist_text.py \
      --out docs/results/copy_benchmark/mnist_text          # data only: no trained model needed

Writes results.json (everything), table.md (the tables) and tpr_vs_strength.png. With --workdir,
the model's own reconstructions join the positives; with --control, the control model's samples
join the negatives; with --study, TPR is also reported on the positives no further from their
image than the model's own CFG w = 7.5 copies. Errors print one line and exit with status 2.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()

import numpy as np  # noqa: E402

from minidiff import config as config_lib  # noqa: E402
from minidiff.metrics import copy_benchmark as cb  # noqa: E402
from minidiff.metrics import classifier as classifier_lib  # noqa: E402
from minidiff.metrics import copy_detection as cd  # noqa: E402
from minidiff.study import copy_benchmark as study_cb  # noqa: E402
from minidiff.train import inputs  # noqa: E402


def _config(args):
  if args.workdir:
    return config_lib.load_workdir_config(args.workdir)
  spec = importlib.util.spec_from_file_location("config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _pct(x):
  return "—" if x is None else f"{100 * x:.1f}"


def table(result: dict, command: str) -> str:
  extra = list(result["extra_negatives"])
  lines = [f"Command: `{command}`", "",
           f"{result['n_positives']} positives from {result['n_sources']} training images "
           f"({', '.join(result['positive_kinds'])}); {result['n_heldout']} real held-out "
           f"negatives (half set each threshold at ≤ {100 * result['fpr']:.0f}% FPR, the other half "
           f"measures it; {result['n_heldout_hard']} hard ones: each training image's "
           f"{cb.HARD_NEIGHBOURS} nearest held-out images)"
           + (f"; generated negatives: {', '.join(f'{k} ({v})' for k, v in result['extra_negatives'].items())}"
              if extra else "") + ".", ""]
  if result["copy_distance"]:
    lines += ["The model's own copies (CFG w = 7.5, memorized classes) lie at most "
              + ", ".join(f"{d:.2f} (class {c})" for c, d in result["copy_distance"].items())
              + " from their image in pixel L2; \"TPR ≤ copy dist.\" is TPR on the positives "
              "no further from their source than that.", ""]
  head = ("| score | AUC | TPR (all positives) | TPR ≤ copy dist. | FPR held-out | FPR hard | "
          + "".join(f"FPR {k} | " for k in extra))
  lines += [head, "|" + "---|" * (6 + len(extra))]
  for name, m in result["metrics"].items():
    within = (m.get("within_copy_distance") or {}).get("all") or {}
    lines.append(f"| `{name}` | {m['auc']:.3f} | {_pct(m['tpr'])} | {_pct(within.get('tpr'))} | "
                 f"{_pct(m['fpr_heldout'])} | {_pct(m['fpr_hard'])} | "
                 + "".join(f"{_pct(m['extra_negatives'][k]['fpr'])} | " for k in extra))
  classes = sorted({c for m in result["metrics"].values() for c in m["per_class"]}, key=int)
  lines += ["", "Per class: AUC / TPR (%) / threshold", "",
            "| score | " + " | ".join(f"class {c}" for c in classes) + " |",
            "|---|" + "---|" * len(classes)]
  for name, m in result["metrics"].items():
    cells = []
    for c in classes:
      r = m["per_class"].get(c)
      cells.append("—" if r is None or r["auc"] is None else
                   f"{r['auc']:.3f} / {_pct(r['tpr'])} / {r['threshold']:.3g}")
    lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
  kinds = list(next(iter(result["metrics"].values()))["by_kind"])
  lines += ["", "TPR (%) by kind of positive and strength", "",
            "| score | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
  for name, m in result["metrics"].items():
    lines.append(f"| `{name}` | " + " | ".join(_pct(m["by_kind"][k]["tpr"]) for k in kinds) + " |")
  lines += ["", "Median pixel L2 of each kind of positive to its source: "
            + ", ".join(f"{k} {v['median']:.2f}" for k, v in result["positive_distance"].items() if v),
            "", "![TPR against corruption strength](tpr_vs_strength.png)", ""]
  return "\n".join(lines)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/mnist_dup.py", help="config whose data to use")
  p.add_argument("--workdir", default=None, help="a trained run: its config, data and model")
  p.add_argument("--control", default=None, help="a run trained without duplication")
  p.add_argument("--study", default=None, help="the run's study folder (its CFG w=7.5 copies)")
  p.add_argument("--out", required=True)
  p.add_argument("--per_class", type=int, default=20, help="unique training images per class")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_features", action="store_true", help="skip the classifier-feature score")
  args = p.parse_args()
  if os.path.exists(os.path.join(args.out, "results.json")):
    print(f"{args.out} already holds a benchmark: pass another --out (nothing is overwritten).",
          file=sys.stderr)
    return 2
  t0 = time.perf_counter()
  try:
    config = _config(args)
    subset = inputs.load_training_data(config)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  man = subset.manifest
  heldout, heldout_labels = inputs.heldout_data(config, man, per_class=10_000)
  sources = cb.choose_sources(man.label, man.is_duplicated, per_class=args.per_class, seed=args.seed)
  positives = cb.corrupted_positives(subset.unique_images, sources, seed=args.seed)
  named_of_class = {int(man.label[u]): int(u) for u in man.duplicated_ids[::-1]}  # the first by id
  extra = {}
  if args.workdir:
    print(f"Reconstructing {len(sources)} training images with the model (DDIM inversion)…")
    positives = cb.merge(positives, study_cb.reconstructions(args.workdir, subset.unique_images,
                                                             man.label, sources))
  if args.control:
    print("Sampling the control model on the memorized classes…")
    extra = study_cb.control_samples(args.control, sorted(named_of_class), named_of_class)
  copy_distance = (study_cb.model_copy_distance(args.study, subset.unique_images)
                   if args.study else None)
  features_fn = None
  if not args.no_features:  # the evaluation classifier's penultimate features (cached)
    clf = classifier_lib.load_or_train_classifier(
        resolution=config.data.resolution, dataset=config.data.name, seed=0,
        settings=classifier_lib.TrainSettings(epochs=config.study.get("classifier_epochs", 15)))
    features_fn = clf.features
  result = cb.run_benchmark(subset.unique_images, man.label, man.is_duplicated, heldout,
                            heldout_labels, positives=positives, extra_negatives=extra,
                            features_fn=features_fn, seed=args.seed, copy_distance=copy_distance)
  command = "python scripts/copy_benchmark.py " + " ".join(sys.argv[1:])
  result.update(command=command, wall_s=time.perf_counter() - t0, data=config.data.name,
                resolution=int(config.data.resolution), primary=cd.PRIMARY_NAMED,
                primary_nearest=cd.PRIMARY_NEAREST)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(table(result, command))
  study_cb.tpr_figure(result, os.path.join(args.out, "tpr_vs_strength.png"),
                      scores=list(result["metrics"]))
  print(f"Benchmark written to {args.out} (results.json, table.md, tpr_vs_strength.png) in "
        f"{result['wall_s']:.0f} s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
