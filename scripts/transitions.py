"""Per-sample transition points of a trained run: k*, the oracle frontier, the detectors.

  python scripts/transitions.py --workdir runs/mnist_dup_s0 --num 200 --outdir OUT [--use 50]
  python scripts/transitions.py --workdir runs/mnist_text_s0 --num 200 --outdir OUT  # text: its memorized captions

A thin entry point: the CPU settings, then minidiff.study.transitions.main (see its flags and
docs/transitions.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()  # before JAX is imported

from minidiff.study import transitions  # noqa: E402

if __name__ == "__main__":
  sys.exit(transitions.main())
