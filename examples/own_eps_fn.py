"""Any ε-function into the jitted sampler: an analytic denoiser, and a wrapper of a trained model.

  python examples/own_eps_fn.py                          # the analytic part needs no trained run
  python examples/own_eps_fn.py --workdir runs/mnist_dup # also wraps the run's model

Part 1: ε(x_t, t) = 0 under DDIM (η = 0, no clipping) maps x_T to x_T / √ᾱ_{t₀} exactly (each step
multiplies by √ᾱ_prev/√ᾱ_t), checked against that closed form. Part 2: the run's model with its
ε scaled by 0.9 ("my_eps"), traced into the same jitted sampler as the model itself.
"""
import argparse

import minidiff  # first: applies the CPU settings before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from minidiff.core import samplers  # noqa: E402
from minidiff.core.schedule import make_schedule  # noqa: E402


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=None)
  p.add_argument("--num", type=int, default=8)
  args = p.parse_args(argv)

  schedule = make_schedule("linear", 1000)
  zero_eps = lambda x_t, t, cond: jnp.zeros_like(x_t)  # noqa: E731
  sample = minidiff.jitted_sampler(zero_eps, schedule=schedule, strategy="cfg:w=3", num_steps=10,
                                   clip_x0=False)
  x_T = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))  # noqa: N806
  cond, null = jnp.zeros(4, jnp.int32), jnp.full(4, 10, jnp.int32)  # null: leading dim B too
  x0, diag = sample(x_T, cond, null, jax.random.key(1))
  t0 = int(samplers.time_grid(1000, 10)[0])
  expected = np.asarray(x_T) / np.sqrt(float(schedule.alpha_bar[t0]))
  print(f"analytic ε = 0: max |x₀ − x_T/√ᾱ_t₀| = {np.abs(np.asarray(x0) - expected).max():.2e} "
        f"(t₀ = {t0}, {len(diag.t)} steps)")

  if args.workdir:
    run = minidiff.load(args.workdir)
    my_eps = lambda x_t, t, c: 0.9 * run.eps_fn(x_t, t, c)  # noqa: E731
    plain = run.sample("cfg:w=3", classes=[0], num=args.num)
    scaled = run.sample("cfg:w=3", classes=[0], num=args.num, eps_fn=my_eps)
    print(f"model ε × 0.9 vs the model: mean |Δ| of the samples = "
          f"{np.abs(plain.samples - scaled.samples).mean():.3f}")


if __name__ == "__main__":
  main()
