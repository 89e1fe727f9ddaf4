"""Training throughput of a config: images/s and achieved GFLOP/s (XLA cost analysis).

  python benchmarks/train_throughput.py [--config configs/mnist_dup.py] [--steps 30]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from minidiff import trainer  # noqa: E402
from minidiff.schedule import make_schedule  # noqa: E402


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/mnist_dup.py")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--batch", type=int, default=None)
  args = p.parse_args()
  c = load_config(args.config)
  if args.batch:
    c.train.batch_size = args.batch
  b, r, ch = c.train.batch_size, c.data.resolution, c.data.channels
  graphdef, state, tx = trainer.init_state(c)
  step_fn = trainer.make_train_step(graphdef, tx, make_schedule(c.diffusion.schedule, c.diffusion.T),
                                    p_uncond=c.train.p_uncond, null_id=10, ema_decay=c.train.ema_decay)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (b, r, r, ch)).astype(np.float32)
  y = rng.integers(0, 10, b).astype(np.int32)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  lowered = step_fn.lower(state.params, state.opt_state, state.ema_params, x, y, key, 0)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  params, opt, ema = state.params, state.opt_state, state.ema_params
  for i in range(3):  # warm-up
    params, opt, ema, m = compiled(params, opt, ema, x, y, jax.random.fold_in(key, i), i)
  jax.block_until_ready(m["loss"])
  t0 = time.perf_counter()
  for i in range(args.steps):
    params, opt, ema, m = compiled(params, opt, ema, x, y, jax.random.fold_in(key, i), i)
  jax.block_until_ready(m["loss"])
  dt = (time.perf_counter() - t0) / args.steps
  print(f"config={args.config} resolution={r} batch={b} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"compile: {compile_s:.1f} s")
  print(f"train step: {dt * 1000:.1f} ms  → {b / dt:.1f} images/s")
  print(f"XLA cost analysis: {flops / 1e9:.2f} GFLOP/step → {flops / dt / 1e9:.1f} GFLOP/s achieved")


if __name__ == "__main__":
  main()
