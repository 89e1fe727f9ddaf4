"""Where a training step's time goes on XLA:CPU, by ablation; the faster layer formulations, each
alone; and convolutions JAX vs PyTorch.

  python benchmarks/profile_step.py [--setting default] [--steps 5] [--rounds 3]
                                    [--parts ablations,candidates,convolutions]

Part "ablations" times the jitted train step of the UNet, then the same step with one kind of layer
replaced by the identity (GroupNorm, attention) or swapped for the slower form (upsampling through
`jax.image.resize`): the difference is that layer's share. Part "candidates" times the step with
each faster formulation of minidiff.nn.layers swapped in alone (`layers.GroupNorm`,
`layers.self_attention`), then both, as `model.fused_layers=True` builds them. Every variant
is compiled first and the variants are then timed interleaved, `--rounds` rounds of `--steps`
steps each (medians), so a shared machine slows them alike. Part "convolutions" times every 3×3 convolution shape of the 16×16 and 28×28 UNets
alone, forward and forward+backward, in JAX and in PyTorch eager. Each part prints a Markdown table
(docs/performance.md quotes them).
"""
from __future__ import annotations

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
from flax import nnx  # noqa: E402

from benchmarks.bench import _config, _median_of, _time  # noqa: E402
from minidiff.nn import layers, unet  # noqa: E402
from minidiff.train import trainer  # noqa: E402
from minidiff.train import state as train_state  # noqa: E402


def make_step(setting: str, *, fused: bool = False):
  """A blocking call of the compiled training step of `setting` (compiled now, warmed up).

  `fused`: the UNet with model.fused_layers=True.
  """
  c = _config(setting, fused=fused)
  graphdef, state, tx = train_state.init_state(c)
  b, r, ch = c.train.batch_size, c.data.resolution, c.data.channels
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (b, r, r, ch)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, b), jnp.int32)
  step = trainer.step_function(c, graphdef, tx)
  holder = [state.params, state.opt_state, state.ema_params]

  def run():
    p, o, e, m = step(*holder, x, y, jax.random.key(0), 1)
    holder[:] = [p, o, e]
    m["loss"].block_until_ready()

  run()
  run()
  return run


def _einsum_attention(self, x, context=None):
  """unet.AttentionBlock.__call__ with the attention through layers.self_attention."""
  b, hgt, wid, c = x.shape
  q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, hgt * wid, 3 * c), 3, axis=-1)
  return x + self.out(layers.self_attention(q, k, v, self.num_heads).reshape(b, hgt, wid, c))


# name: [(owner, attribute, replacement)], applied while the step is built and compiled; FUSED
# instead builds the step with model.fused_layers=True.
FUSED = "fused_layers"
ABLATIONS = {
    "GroupNorm → identity": [(nnx.GroupNorm, "__call__", lambda self, x, *a, **k: x)],
    "attention → identity": [(unet.AttentionBlock, "__call__", lambda self, x, context=None: x)],
    "upsampling via jax.image.resize": [(
        unet, "upsample_nearest",
        lambda x: jax.image.resize(x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), "nearest"))],
}
CANDIDATES = {  # the faster formulations of minidiff.nn.layers, each alone, then together
    "fused GroupNorm (layers.GroupNorm)": [(unet.nnx, "GroupNorm", layers.GroupNorm)],
    "attention as two einsums (layers.self_attention)": [(unet.AttentionBlock, "__call__", _einsum_attention)],
}
CANDIDATES["both: model.fused_layers=True"] = FUSED


def _built_with(setting: str, patches):
  if patches == FUSED:
    return make_step(setting, fused=True)
  saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
  for owner, attr, fn in patches:
    setattr(owner, attr, fn)
  try:
    return make_step(setting)
  finally:
    for owner, attr, old in saved:
      setattr(owner, attr, old)


def ablations(setting: str, steps: int, rounds: int, table: dict) -> None:
  """Times the full step and each variant of `table`, interleaved over `rounds` rounds."""
  runs = {"full step": make_step(setting)}
  runs.update({name: _built_with(setting, patches) for name, patches in table.items()})
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      times[name].append(_median_of(run, steps))
  med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
  full = med["full step"]
  print(f"\n| train step, {setting} | ms | vs full step | per round (ms) |\n|---|---|---|---|")
  for name, t in med.items():
    rounds_ms = ", ".join(f"{x * 1e3:.0f}" for x in times[name])
    print(f"| {name} | {t * 1e3:.1f} | {(t - full) / full:+.0%} | {rounds_ms} |", flush=True)


def convolutions() -> None:
  import torch
  shapes = [(32, 16, 32, 32, 1), (32, 8, 64, 64, 1), (32, 16, 32, 32, 2), (64, 28, 32, 32, 1),
            (64, 14, 64, 64, 1), (64, 7, 64, 64, 1), (64, 28, 32, 32, 2), (64, 14, 64, 64, 2)]
  print("\n| batch, size, channels, stride | GFLOP fwd | JAX fwd ms | JAX fwd+bwd ms | "
        "PyTorch fwd ms | PyTorch fwd+bwd ms |\n|---|---|---|---|---|---|")
  for b, h, cin, cout, s in shapes:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, h, h, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    conv = lambda x, w, s=s: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fwd, both = jax.jit(conv), jax.jit(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)))
    tf = _time(lambda: fwd(x, w).block_until_ready(), 10)
    tb = _time(lambda: jax.block_until_ready(both(x, w)), 10)
    xt = torch.randn(b, cin, h, h, requires_grad=True)
    wt = torch.randn(cout, cin, 3, 3, requires_grad=True)
    ttf = _time(lambda: torch.nn.functional.conv2d(xt, wt, stride=s, padding=1), 10)
    ttb = _time(lambda: torch.nn.functional.conv2d(xt, wt, stride=s, padding=1).sum().backward(), 10)
    gflop = 2 * b * (h // s) ** 2 * cin * cout * 9 / 1e9
    print(f"| {b}, {h}², {cin}→{cout}, {s} | {gflop:.2f} | {tf * 1e3:.1f} | {tb * 1e3:.1f} | "
          f"{ttf * 1e3:.1f} | {ttb * 1e3:.1f} |", flush=True)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--setting", default="default")
  p.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--parts", default="ablations,candidates,convolutions")
  args = p.parse_args()
  parts = args.parts.split(",")
  t0 = time.perf_counter()
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if "ablations" in parts:
    ablations(args.setting, args.steps, args.rounds, ABLATIONS)
  if "candidates" in parts:
    ablations(args.setting, args.steps, args.rounds, CANDIDATES)
  if "convolutions" in parts:
    convolutions()
  print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
  main()
