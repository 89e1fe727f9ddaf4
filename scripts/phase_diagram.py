"""Memorization against the number of training images n: Gu et al.'s curve and Bonnaire et al.'s τ_mem.

  python scripts/phase_diagram.py --workroot runs/phase --outdir docs/results/phase_diagram \\
      [--ns 20,40,80] [--arms class,uncond] [--steps 2000] [--every 50]

Trains configs/mnist_dup.py's UNet (at --base_channels, --resolution) on n unique images for every
n and arm with the memorization monitor on (minidiff/study/phase.py), then writes results.json,
memorization_vs_n.png, tau_mem_vs_n.png and curves.png to --outdir. Finished runs under --workroot
are reused: rerun the same command after a kill to go on. --results_only redraws from the runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()  # before JAX is imported

from configs import mnist_dup  # noqa: E402
from minidiff.study import phase  # noqa: E402


def main() -> None:
  d = phase.PhaseSettings()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workroot", required=True, help="where the training runs go (one folder per run)")
  p.add_argument("--outdir", required=True, help="where results.json and the figures go")
  p.add_argument("--ns", default=",".join(map(str, d.ns)), help="training-set sizes, multiples of 10")
  p.add_argument("--arms", default=",".join(d.arms), help=f"of {sorted(phase.ARMS)}")
  for name in ("steps", "batch_size", "num_samples", "num_steps", "resolution", "base_channels", "seed"):
    p.add_argument(f"--{name}", type=int, default=getattr(d, name))
  p.add_argument("--every", type=int, default=d.monitor_every, help="monitor interval (steps)")
  p.add_argument("--lr", type=float, default=d.lr)
  p.add_argument("--ema_decay", type=float, default=d.ema_decay)
  p.add_argument("--results_only", action="store_true", help="only rewrite results and figures")
  p.add_argument("--null_branch", action="store_true", help="also measure each finished class "
                 "run's null branch (w = 0) at its last checkpoint")
  a = p.parse_args()
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("minidiff").setLevel(logging.INFO)
  try:
    settings = phase.PhaseSettings(
        ns=tuple(int(n) for n in a.ns.split(",")), arms=tuple(a.arms.split(",")), steps=a.steps,
        batch_size=a.batch_size, lr=a.lr, ema_decay=a.ema_decay, monitor_every=a.every, num_samples=a.num_samples,
        num_steps=a.num_steps, resolution=a.resolution, base_channels=a.base_channels, seed=a.seed)
    settings.validate()
  except ValueError as e:
    sys.exit(f"phase_diagram.py: {e}")
  # Every run of an arm compiles the same programs (n does not enter them): compile once.
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(a.workroot, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  t0 = time.perf_counter()
  if a.results_only:
    results = phase.write_results(settings, workroot=a.workroot, outdir=a.outdir,
                                  null_branch=a.null_branch)
  else:
    results = phase.run_phase_diagram(mnist_dup.get_config(), settings, workroot=a.workroot,
                                      outdir=a.outdir)
  print(json.dumps(dataclasses.asdict(settings)))
  for arm, r in results["arms"].items():
    for n, run in r["runs"].items():
      print(f"{arm:7s} n={int(n):4d}  final {run['final_copy_rate']:.2f}  best {run['best_copy_rate']:.2f}"
            f"  tau_mem {run['tau_mem']}  train {run['train_wall_s'] or 0:.0f} s wall, "
            f"{run['train_cpu_s'] or 0:.0f} s CPU"
            + (f"  null branch {run['null_branch']['copy_rate']:.2f}" if "null_branch" in run else ""))
    for level, fit in r["tau_fit"].items():
      if "slope" in fit:
        print(f"{arm:7s} tau_mem({level}) = {fit['intercept']:.0f} + {fit['slope']:.2f}·n, "
              f"R² {fit['r2']:.3f} over {fit['n_points']} n; censored {fit['censored_n']}")
  print(f"Wrote {a.outdir}/results.json and figures in {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
  main()
