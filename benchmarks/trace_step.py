"""Where a CPU training step's time goes, by kind of XLA operation, from a jax.profiler trace.

    python benchmarks/trace_step.py                  # the default setting, 5 traced steps
    python benchmarks/trace_step.py --setting mnist28

Traces `--steps` training steps (after 3 untraced ones) and sums the durations of the XLA:CPU
thunks in the trace by kind (`transpose_copy_fusion.23` → `transpose_copy_fusion`), per step.
Caveat: an Eigen convolution's work runs on the intra-op pool after its thunk has started, so
convolutions are under-counted; the sums say which memory-bound fusions are large, not the whole
step. The trace itself is left under --logdir for TensorBoard / Perfetto.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_NOT_OPS = ("ThunkExecutor", "Pjit", "Execute", "ParseArguments")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--setting", default="default")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--logdir", default="/tmp/minidiff_trace")
  args = p.parse_args()
  from minidiff import runtime
  runtime.configure_cpu()
  import jax

  import bench
  step, info = bench.jax_train(argparse.Namespace(setting=args.setting, dtype="float32", flops=float("nan")))
  for _ in range(3):
    step()
  with jax.profiler.trace(args.logdir, create_perfetto_trace=True):
    for _ in range(args.steps):
      step()
  path = max(glob.glob(f"{args.logdir}/**/*.trace.json.gz", recursive=True), key=os.path.getmtime)
  events = [e for e in json.load(gzip.open(path))["traceEvents"] if e.get("ph") == "X"]
  by_kind = collections.Counter()
  for e in events:
    if e["name"].startswith("$") or any(s in e["name"] for s in _NOT_OPS):
      continue  # Python frames and the executor's own spans
    by_kind[re.sub(r"\.\d+$", "", e["name"])] += e["dur"] / 1e3 / args.steps
  total = sum(by_kind.values())
  print(f"{args.setting}: batch {info['batch']}, {args.steps} traced steps; XLA ops sum to {total:.1f} ms/step")
  for kind, ms in by_kind.most_common(args.top):
    print(f"{ms:8.2f} ms/step  {100 * ms / total:5.1f}%  {kind}")


if __name__ == "__main__":
  main()
