"""Check the copy metrics by eye: blind sheets of study samples, labels, and agreement (Cohen's κ).

  python scripts/eye_check.py sheets runs/mnist_dup/study --out docs/results/mnist_dup_default/eye_check
  # label every item of sheet_*.png in labels.json ("1" copy / "0" not a copy of a training image)
  python scripts/eye_check.py score runs/mnist_dup/study --out docs/results/mnist_dup_default/eye_check

`sheets` draws --num samples at random over every arm (a share --memorized_share of them on
memorized conditions) and draws each as a numbered triplet — the sample, the training image its
condition names (blank if none), its nearest training image by pixel L2 — with no arm, score or
flag on the sheet; items.json keeps what each number is. `score` compares the labels with every
copy flag of results.json: accuracy and Cohen's κ, per metric, written to agreement.json and
agreement.md. Errors print one line and exit with status 2.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

PER_SHEET = 20


def _mask(text: str) -> np.ndarray:
  return np.frombuffer(text.encode(), np.uint8) == ord("1")


def _load(study: str) -> dict:
  path = os.path.join(study, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: run the study first (python sample.py).")
  with open(path) as f:
    return json.load(f)


def _slug(results: dict, label: str) -> str:
  for title, path in results["seeds"][0]["figures"].items():
    if title.startswith(label + ": ") and path.endswith("_grid.png"):
      return os.path.basename(path)[:-len("_grid.png")]
  raise ValueError(f"No grid figure for arm {label!r} in results.json: run the study with figures.")


def sheets(args) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from minidiff import config as config_lib
  from minidiff.train import inputs
  results = _load(args.study)
  seed = results["seeds"][0]
  unique = inputs.load_training_data(config_lib.load_workdir_config(seed["workdir"])).unique_images
  mem = _mask(seed["conditions"]["groups_mask"]["memorized"])
  target = np.asarray(seed["conditions"]["target_image"])
  labels = [a["label"] for a in results["arms"]]
  pool = [(a, i) for a in labels for i in range(len(mem))]
  rng = np.random.default_rng(args.seed)
  n_mem = int(round(args.memorized_share * args.num))
  mem_pool = [p for p in pool if mem[p[1]]]
  other_pool = [p for p in pool if not mem[p[1]]]
  chosen = ([mem_pool[j] for j in rng.choice(len(mem_pool), n_mem, replace=False)] +
            [other_pool[j] for j in rng.choice(len(other_pool), args.num - n_mem, replace=False)])
  chosen = [chosen[j] for j in rng.permutation(len(chosen))]  # blind to arm and group
  os.makedirs(args.out, exist_ok=True)
  if os.path.exists(os.path.join(args.out, "items.json")):
    raise ValueError(f"{args.out} already holds an eye check: pass another --out.")
  samples = {a: np.load(os.path.join(args.study, "seed_0", f"{_slug(results, a)}.npz"))["samples"]
             for a in labels}
  items = []
  for k, (a, i) in enumerate(chosen):
    nn = int(seed["arms"][a]["nn_index"][i])
    items.append(dict(item=k, arm=a, index=int(i), target=int(target[i]), nearest=nn))
  show = lambda ax, img: (ax.imshow((np.clip(img[..., 0], -1, 1) + 1) / 2, cmap="gray", vmin=0,  # noqa: E731
                                    vmax=1), ax.set_xticks([]), ax.set_yticks([]))
  for s in range(0, len(items), PER_SHEET):
    part = items[s:s + PER_SHEET]
    fig, axes = plt.subplots(4, 15, figsize=(15, 4.6))
    for ax in axes.ravel():
      ax.axis("off")
    for j, it in enumerate(part):
      r, c = divmod(j, 5)
      trio = [samples[it["arm"]][it["index"]],
              unique[it["target"]] if it["target"] >= 0 else np.full_like(unique[0], -1.0),
              unique[it["nearest"]]]
      for q, img in enumerate(trio):
        ax = axes[r, 3 * c + q]
        ax.axis("on")
        show(ax, img)
      axes[r, 3 * c].set_title(f"#{it['item']}", fontsize=9)
      axes[r, 3 * c + 1].set_title("named", fontsize=6)
      axes[r, 3 * c + 2].set_title("nearest", fontsize=6)
    fig.suptitle("sample | training image its condition names | nearest training image", fontsize=9)
    fig.savefig(os.path.join(args.out, f"sheet_{s // PER_SHEET:02d}.png"), dpi=130)
    plt.close(fig)
  with open(os.path.join(args.out, "items.json"), "w") as f:
    json.dump(dict(study=args.study, seed=args.seed, items=items), f, indent=1)
  print(f"{len(items)} items on {len(range(0, len(items), PER_SHEET))} sheets in {args.out}; "
        f"write labels.json as {{\"labels\": \"0101…\"}} in item order.")


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
  """Cohen's κ of two binary labelings: (p_o − p_e) / (1 − p_e); 1.0 when both are constant alike."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  po = float(np.mean(a == b))
  pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
  return 1.0 if pe == 1.0 else (po - pe) / (1 - pe)


def score(args) -> None:
  results = _load(args.study)
  seed = results["seeds"][0]
  with open(os.path.join(args.out, "items.json")) as f:
    items = json.load(f)["items"]
  with open(os.path.join(args.out, "labels.json")) as f:
    raw = json.load(f)
  labels = _mask(raw["labels"])
  if len(labels) != len(items):
    raise ValueError(f"labels.json has {len(labels)} labels for {len(items)} items.")
  def flag(metric, it):
    return _mask(seed["arms"][it["arm"]]["flags"][metric])[it["index"]]
  metrics = {
      "primary (copy of the named image, else of any image)":
          lambda it: flag("copy", it) or flag("copy_any", it),
      "copy: named image only": lambda it: flag("copy", it),
      "copy_any": lambda it: flag("copy_any", it),
      "copy_ratio (d₁/d₂ < 1/3)": lambda it: flag("copy_ratio", it),
      "carlini < 0.5": lambda it: flag("carlini_below_0_5", it),
  }
  mem = np.asarray([it["target"] >= 0 for it in items])
  out = dict(n=len(items), n_memorized=int(mem.sum()), copies_by_eye=int(labels.sum()),
             labeller=raw.get("labeller"), metrics={})
  for name, fn in metrics.items():
    pred = np.asarray([fn(it) for it in items])
    out["metrics"][name] = dict(
        accuracy=float(np.mean(pred == labels)), kappa=cohen_kappa(pred, labels),
        accuracy_memorized=float(np.mean(pred[mem] == labels[mem])),
        kappa_memorized=cohen_kappa(pred[mem], labels[mem]),
        false_positives=int(np.sum(pred & ~labels)), false_negatives=int(np.sum(~pred & labels)))
  with open(os.path.join(args.out, "agreement.json"), "w") as f:
    json.dump(out, f, indent=1)
  lines = [f"Eye check: {out['n']} study samples ({out['n_memorized']} on memorized conditions), "
           f"labelled blind to arm and metric; {out['copies_by_eye']} copies by eye.", "",
           "| metric | accuracy | Cohen's κ | κ, memorized conditions | false pos. | false neg. |",
           "|---|---|---|---|---|---|"]
  for name, m in out["metrics"].items():
    lines.append(f"| {name} | {m['accuracy']:.3f} | {m['kappa']:.3f} | {m['kappa_memorized']:.3f} | "
                 f"{m['false_positives']} | {m['false_negatives']} |")
  with open(os.path.join(args.out, "agreement.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("what", choices=("sheets", "score"))
  p.add_argument("study", help="a study folder (results.json, seed_0/*.npz)")
  p.add_argument("--out", required=True)
  p.add_argument("--num", type=int, default=200)
  p.add_argument("--memorized_share", type=float, default=0.7)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  try:
    (sheets if args.what == "sheets" else score)(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
