"""Load a trained run and sample it with a guidance spec: the shortest use of the API.

  python examples/sample_a_run.py --workdir runs/mnist_dup --guidance cfg:w=3 --classes 0,7 --num 20

Writes a labelled grid (one class per row) to --out and prints what came back.
"""
import argparse

import minidiff  # first: applies the CPU settings before JAX starts

from minidiff.study import figures  # noqa: E402  (matplotlib: only for the grid)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="runs/mnist_dup")
  p.add_argument("--guidance", default="cfg:w=3", help="one spec, e.g. opposite:tau=650:s=2")
  p.add_argument("--classes", default="0,7")
  p.add_argument("--num", type=int, default=20)
  p.add_argument("--step", type=int, default=None, help="an earlier checkpoint (default: the latest)")
  p.add_argument("--out", default="sample_a_run.png")
  args = p.parse_args(argv)

  run = minidiff.load(args.workdir, step=args.step)
  out = run.sample(args.guidance, classes=[int(c) for c in args.classes.split(",")], num=args.num,
                   seed=0)
  print(f"checkpoint step {run.step}: samples {out.samples.shape} in [{out.samples.min():.2f}, "
        f"{out.samples.max():.2f}], w at the first step {out.w[0, 0]:.2f}, "
        f"{out.sample_s:.1f} s after a {out.compile_s:.1f} s compile")
  figures.labelled_grid(out.samples, [f"class {c}" for c in out.labels], args.out, title=args.guidance)
  print(f"grid: {args.out}")


if __name__ == "__main__":
  main()
