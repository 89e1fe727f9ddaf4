"""The minidiff training step compiled with several XLA:CPU compiler options, timed in one process.

    python benchmarks/xla_options.py                      # the default setting, 30 interleaved rounds
    python benchmarks/xla_options.py --setting mnist28 --rounds 20

The step is compiled once per option set (`Lowered.compile(compiler_options=…)`,
which takes XLA's DebugOptions fields by name). Each round then runs one step of every variant in a
rotating order, so a slowdown of this shared machine hits all variants alike; a variant's number
is the median over rounds of its speed relative to the first variant (the minidiff default) in the
same round. Options that are read when the CPU client starts (device count, YNNPACK fusion types)
cannot be set this way: `bench.py --variants` compares those in separate processes. Output: one
line per variant and a JSON file under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (name, compiler options); the first is the reference.
VARIANTS = {
    "minidiff default": {},
    "concurrency-optimized scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    "512-bit vectors": {"xla_cpu_prefer_vector_width": 512},
    "fast math": {"xla_cpu_enable_fast_math": True},
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--setting", default="default", help="a setting of bench.py (default, mnist28, tiny)")
  p.add_argument("--rounds", type=int, default=30, help="interleaved rounds of one step per variant")
  p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/xla_options_<setting>.json)")
  args = p.parse_args()
  out = args.out or os.path.join(ROOT, "benchmarks", "results", f"xla_options_{args.setting}.json")
  if os.path.exists(out):
    raise SystemExit(f"{out} exists: pass --out to write elsewhere (results are never overwritten).")

  import numpy as np

  import bench
  steps, batch = {}, None
  for name, options in VARIANTS.items():  # each variant: its own fresh state and compilation
    steps[name], info = bench.jax_train(argparse.Namespace(setting=args.setting, dtype="float32",
                                                           flops=float("nan")), compiler_options=options)
    batch = info["batch"]
    print(f"compiled {name!r} in {info['compile_s']:.1f} s", flush=True)

  names = list(steps)
  seconds = {n: [] for n in names}
  for i in range(args.rounds):
    for n in names[i % len(names):] + names[:i % len(names)]:
      t0 = time.perf_counter()
      steps[n]()
      seconds[n].append(time.perf_counter() - t0)
    if (i + 1) % 10 == 0:
      print(f"round {i + 1}/{args.rounds}", flush=True)

  ref, b = names[0], batch
  result = dict(setting=args.setting, batch=b, rounds=args.rounds, xla_flags=os.environ.get("XLA_FLAGS", ""),
                variants={})
  for n in names:
    speedup = float(np.median([a / s for a, s in zip(seconds[ref], seconds[n])]))
    result["variants"][n] = dict(options=VARIANTS[n], images_per_s=b / float(np.median(seconds[n])),
                                 speedup=speedup, seconds=seconds[n])
    print(f"{n:34s} {b / float(np.median(seconds[n])):7.1f} img/s   {speedup:.3f}× the default", flush=True)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
