"""Cost of a 7-value τ sweep: seven static-transition runs one by one against one shared-prefix
family run (`samplers.sample_switch_family`), same noises, keys and model.

  python benchmarks/sweep.py [--workdir runs/mnist_dup] [--batch 100] [--w_pre 0]

Without --workdir the default config's UNet is used at its initialisation (timing only). Prints
compile and sampling seconds of both and their ratio (issue target: family ≤ 0.6× separate), and
the largest difference between their samples.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.sampler import load_model  # noqa: E402
from minidiff import config as config_lib  # noqa: E402
from minidiff.core import guidance, samplers  # noqa: E402

TAUS = (200, 300, 400, 500, 600, 700, 800)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default=None)
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--w_pre", type=float, default=0.0, help="0: delayed CFG; −2: opposite guidance")
  args = p.parse_args()
  config, eps_apply, params, schedule = load_model(args.workdir)
  b, r, ch = args.batch, config.data.resolution, config.data.channels
  x_T = jax.random.normal(jax.random.key(0), (b, r, r, ch))  # noqa: N806
  cond = jnp.arange(b, dtype=jnp.int32) % 10
  null = jnp.full((b,), config_lib.unet_config(config).null_id, jnp.int32)
  key = jax.random.key(1)

  compile_sep, sample_sep, separate = 0.0, 0.0, []
  for tau in TAUS:
    strategy = guidance.StaticTransition(w_pre=args.w_pre, tau=tau, w_post=7.5)
    run = samplers.make_sampler(eps_apply, schedule=schedule, strategy=strategy, num_steps=args.steps)
    t0 = time.perf_counter()
    compiled = run.lower(params, x_T, cond, null, key).compile()
    t1 = time.perf_counter()
    separate.append(np.asarray(compiled(params, x_T, cond, null, key)[0]))
    t2 = time.perf_counter()
    compile_sep, sample_sep = compile_sep + t1 - t0, sample_sep + t2 - t1

  grid = samplers.time_grid(config.diffusion.T, args.steps, "uniform")
  steps = jnp.asarray([samplers.switch_step(grid, tau) for tau in TAUS], jnp.int32)

  def family(params, x, c, n, k):
    eps_fn = lambda x_t, t, cc: eps_apply(params, x_t, t, cc)  # noqa: E731
    return samplers.sample_switch_family(eps_fn, schedule, x, c, n, k, w_pre=args.w_pre, w_post=7.5,
                                         switch_steps=steps, num_steps=args.steps)

  t0 = time.perf_counter()
  compiled = jax.jit(family).lower(params, x_T, cond, null, key).compile()
  t1 = time.perf_counter()
  shared = np.asarray(compiled(params, x_T, cond, null, key)[0])
  t2 = time.perf_counter()
  diff = max(float(np.abs(shared[a] - separate[a]).max()) for a in range(len(TAUS)))
  print(f"{len(TAUS)}-value τ sweep {TAUS}, w_pre={args.w_pre:g} → w_post=7.5, batch {b}, "
        f"{r}×{r}×{ch}, DDIM-{args.steps}")
  print(f"separate runs:   compile {compile_sep:6.1f} s   sample {sample_sep:6.1f} s   "
        f"total {compile_sep + sample_sep:6.1f} s")
  print(f"shared prefix:   compile {t1 - t0:6.1f} s   sample {t2 - t1:6.1f} s   total {t2 - t0:6.1f} s")
  print(f"ratio shared / separate: sampling {(t2 - t1) / sample_sep:.2f}×, "
        f"with compiles {(t2 - t0) / (compile_sep + sample_sep):.2f}×  (target ≤ 0.6×)")
  print(f"max |x₀ shared − x₀ separate| over arms: {diff:.2e}")


if __name__ == "__main__":
  main()
