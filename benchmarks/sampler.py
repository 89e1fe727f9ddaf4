"""Sampler overhead: one jitted DDIM-50 + CFG call (lax.scan) against 50 batched forward passes,
and against a per-step Python loop over a jitted step of the same math.

  python benchmarks/sampler.py [--workdir runs/mnist_dup] [--batch 64] [--steps 50]

Without --workdir the default config's UNet is used at its initialisation (timing only).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.bench import _time  # noqa: E402  (median after a warm-up, as in bench.py)
from configs import mnist_dup  # noqa: E402
from minidiff import config as config_lib  # noqa: E402
from minidiff.core import samplers  # noqa: E402
from minidiff.train import state as train_state  # noqa: E402
from minidiff.core.guidance import make_strategy  # noqa: E402
from minidiff.core.schedule import make_schedule  # noqa: E402




def load_model(workdir: str | None):
  """(config, eps_apply, params, schedule): a trained run's EMA model, or without a workdir the
  default config's UNet at its initialisation (timing only)."""
  if workdir:
    config = config_lib.load_workdir_config(workdir)
    model, _ = train_state.load_ema_model(workdir, config)
  else:
    config = mnist_dup.get_config()
    model = train_state.build_model(config)
  graphdef, params = nnx.split(model, nnx.Param)
  eps_apply = lambda p, x, t, c: nnx.merge(graphdef, p)(x, t, c)  # noqa: E731
  return config, eps_apply, params, make_schedule(config.diffusion.schedule, config.diffusion.T)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default=None)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  config, eps_apply, params, schedule = load_model(args.workdir)
  b, r, ch = args.batch, config.data.resolution, config.data.channels
  null_id = config_lib.unet_config(config).null_id
  x_T = jax.random.normal(jax.random.key(0), (b, r, r, ch))  # noqa: N806
  cond = jnp.arange(b, dtype=jnp.int32) % 10
  null = jnp.full((b,), null_id, jnp.int32)
  key = jax.random.key(1)

  fwd = jax.jit(eps_apply)
  x2, t2, c2 = jnp.concatenate([x_T, x_T]), jnp.full((2 * b,), 500), jnp.concatenate([cond, null])
  t_fwd = _time(lambda: fwd(params, x2, t2, c2).block_until_ready(), 5 * args.repeats)

  strategy = make_strategy("cfg", w=7.5)
  run = samplers.make_sampler(eps_apply, schedule=schedule, strategy=strategy, num_steps=args.steps)
  t_scan = _time(lambda: run(params, x_T, cond, null, key)[0].block_until_ready(), args.repeats)

  eps_fn = lambda x, t, c: eps_apply(params, x, t, c)  # noqa: E731
  t_loop = _time(lambda: samplers.sample_reference(
      eps_fn, schedule, x_T, cond, null, key, strategy=strategy, num_steps=args.steps)[0]
      .block_until_ready(), args.repeats)

  print(f"batch {b}, {r}×{r}×{ch}, DDIM-{args.steps} + CFG (cond and null batched: 2×{b} per step)")
  print(f"one forward pass at 2×{b}:          {t_fwd * 1000:8.1f} ms")
  print(f"jitted lax.scan sampler:           {t_scan:8.2f} s  → {b / t_scan:6.1f} images/s")
  print(f"Python loop over a jitted step:    {t_loop:8.2f} s  → {b / t_loop:6.1f} images/s")
  print(f"overhead ratio scan / ({args.steps} × forward): {t_scan / (args.steps * t_fwd):.3f}  (target ≤ 1.10)")
  print(f"scan speed-up over the Python loop: {t_loop / t_scan:.2f}×")


if __name__ == "__main__":
  main()
