"""A 3×3 convolution's gradient on XLA:CPU: XLA's own against a weight gradient written as a matmul.

    python benchmarks/conv_weight_grad.py              # patches: one dot over 9 shifted copies
    python benchmarks/conv_weight_grad.py --taps       # nine dots, one per kernel tap

The profile of the training step (docs/performance.md) spends ~20% in `transpose_copy` fusions:
XLA writes the weight gradient of a convolution as another convolution with batch and features
swapped, and lays out its input [B, H, W, C] as [C, H, W, B] first. The alternative here computes
dW[kh, kw, :, :] = Σ_{b,h,w} x_pad[b, h+kh, w+kw, :]ᵀ g[b, h, w, :] as dots contracting (B, H, W),
which need no transpose, and dx as XLA does (the convolution with the flipped kernel). It prints
both gradients' times (median of 20 calls after a warm-up, XLA's measured twice, before and after) and the
largest relative difference of the two gradients.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = [(32, 16, 32, 32), (32, 16, 64, 32), (32, 8, 64, 64), (32, 8, 128, 64), (64, 28, 32, 32)]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--taps", action="store_true", help="nine dots (one per tap) instead of one dot over patches")
  args = p.parse_args()
  from minidiff import runtime
  runtime.configure_cpu()
  import jax
  import jax.numpy as jnp
  from jax import lax

  import bench

  dn = ("NHWC", "HWIO", "NHWC")

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

  @jax.custom_vjp
  def conv_dot_grad(x, w):
    return conv(x, w)

  def fwd(x, w):
    return conv(x, w), (x, w)

  def bwd(res, g):
    x, w = res
    kh, kw, ci, co = w.shape
    dx = conv(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
    _, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    shifted = [xp[:, i:i + h, j:j + wd, :] for i in range(kh) for j in range(kw)]
    over_bhw = (((0, 1, 2), (0, 1, 2)), ((), ()))
    if args.taps:
      dw = jnp.stack([lax.dot_general(s, g, over_bhw) for s in shifted])
    else:
      dw = lax.dot_general(jnp.concatenate(shifted, axis=-1), g, over_bhw)
    return dx, dw.reshape(kh, kw, ci, co)

  conv_dot_grad.defvjp(fwd, bwd)

  def median_ms(f, *a):
    return 1e3 * bench._time(lambda: jax.block_until_ready(f(*a)), 20)  # noqa: SLF001

  print(f"weight gradient as {'nine dots' if args.taps else 'one dot over patches'}")
  for b, s, ci, co in SHAPES:
    x = jax.random.normal(jax.random.key(0), (b, s, s, ci))
    w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, ci, co))
    gy = jax.random.normal(jax.random.key(2), (b, s, s, co))
    xla = jax.jit(lambda x, w: jax.vjp(conv, x, w)[1](gy))
    ours = jax.jit(lambda x, w: jax.vjp(conv_dot_grad, x, w)[1](gy))
    err = max(float(jnp.abs(u - v).max() / jnp.abs(u).max()) for u, v in zip(xla(x, w), ours(x, w)))
    t_xla, t_ours, t_xla2 = median_ms(xla, x, w), median_ms(ours, x, w), median_ms(xla, x, w)
    print(f"batch {b}, {s}², {ci}→{co}: XLA {t_xla:.2f} / {t_xla2:.2f} ms, dot weight gradient "
          f"{t_ours:.2f} ms ({min(t_xla, t_xla2) / t_ours:.2f}× XLA), max relative difference {err:.1e}")


if __name__ == "__main__":
  main()
