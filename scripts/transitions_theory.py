"""Per-sample transitions on the exact denoisers of docs/theory.md: k*, the oracle, the detectors.

  python scripts/transitions_theory.py [--n 200] [--out docs/results/transitions/exact]

The construction of minidiff/theory/basin.py (16×16; condition 3 = 0.7·atom + 0.3·Gaussian of the
"3"s, null = Gaussian of all images), deterministic DDIM-50 on the "linspace" grid, x̂₀ clipped,
w_post = 7.5. Two sweeps of static switches at every step k = 0 … 50 from the same noises: w_pre = 0
(delayed CFG) and w_pre = −s (opposite guidance), each scored with the detectors of
minidiff.study.transitions; the authors' dynamic rule (w_pre = 1) and the two-pass opposite rule
(s) are sampled on the same noises. Copy = ‖x − a‖ < ‖x − NN₂‖/3; alignment = the nearest
training image is a "3". Writes <out>/w_pre_<w>/{results.json, report.md, k_star.png, frontier.png}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from minidiff.core import guidance, samplers  # noqa: E402
from minidiff.core.schedule import linear_schedule  # noqa: E402
from minidiff.data import datasets as data  # noqa: E402
from minidiff.study import transitions as tr  # noqa: E402
from minidiff.theory import basin  # noqa: E402

S, MEM, W_POST = 50, 3, 7.5
SCHEDULE = linear_schedule(1000)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=200)
  p.add_argument("--s", type=float, default=2.0, help="opposite-guidance scale (sweep and two-pass)")
  p.add_argument("--out", default="docs/results/transitions/exact")
  a = p.parse_args()
  t_start = time.perf_counter()
  ds = data.load_dataset("mnist_offline", resolution=16)
  setup = basin.build_setup(ds.images, ds.labels, SCHEDULE, memorized=MEM, control=7,
                            atom_weight=0.7)
  den = setup.denoiser
  noise = jnp.asarray(np.random.default_rng(0).standard_normal((a.n, 16, 16, 1)), jnp.float32)
  cond = jnp.full((a.n,), MEM, jnp.int32)
  null = jnp.full((a.n,), setup.null_id, jnp.int32)
  key = jax.random.key(0)
  kw = dict(num_steps=S, spacing="linspace")
  steps = np.arange(S + 1)
  flags = lambda x: (basin.copies(np.asarray(x), setup),  # noqa: E731
                     basin.nearest_labels(np.asarray(x), setup) == MEM)
  # the off-sweep arms, shared by both sweeps' write-ups
  t0 = time.perf_counter()
  two = {}
  for s in sorted({a.s, 7.5}):
    x0, _, tp = jax.jit(lambda x, s=s: samplers.sample_two_pass(
        den.eps, den.schedule, x, cond, null, key, s=s, w_post=W_POST, **kw))(noise)
    two[s] = (*flags(x0), np.asarray(tp.transition_step))
  x_dyn, d_dyn = jax.jit(lambda x: samplers.sample(
      den.eps, den.schedule, x, cond, null, key,
      strategy=guidance.DynamicTransition(w_pre=1.0, w_post=W_POST), **kw))(noise)
  dyn = (*flags(x_dyn), np.asarray(d_dyn.transition_step))
  arms_s = time.perf_counter() - t0
  for w_pre in (0.0, -a.s):
    t0 = time.perf_counter()
    x0, diag = jax.jit(lambda x, w=w_pre: samplers.sample_switch_family(
        den.eps, den.schedule, x, cond, null, key, w_pre=w, w_post=W_POST,
        switch_steps=jnp.asarray(steps), **kw))(noise)
    sweep_s = time.perf_counter() - t0
    copied, correct = flags(x0)
    out = tr.Outcomes(steps=steps, t=np.asarray(diag.t), copied=copied, correct=correct)
    rules = tr.default_detectors(w_pre=w_pre, w_post=W_POST)
    k_hat = tr.fire_all(rules, np.asarray(diag.d_eps[-1]), np.asarray(diag.d_x0[-1]),
                        np.asarray(diag.t), den.schedule)
    extra = {f"two_pass_s{s:g}": (*v, -s == w_pre) for s, v in two.items()}
    extra["authors_dynamic_w_pre1"] = (*dyn, w_pre == 1.0)
    r = tr.analyse(out, k_hat, extra=extra)
    r.update(command="python scripts/transitions_theory.py " + " ".join(sys.argv[1:]),
             workdir="exact denoisers (minidiff/theory/basin.py, π = 0.7, 16×16)",
             conditions=f"condition {MEM} (memorized), {a.n} noises", kind="exact",
             copy_def="‖x − a‖ < ‖x − NN₂‖/3 (a the atom)",
             alignment_def=f"the nearest training image is a \"{MEM}\"",
             w_pre=w_pre, w_post=W_POST, checkpoint_step=0,
             sampler=dict(sampler="ddim", num_steps=S, eta=0.0, spacing="linspace", clip_x0=True,
                          seed=0),
             rules={k: repr(v) for k, v in rules.items()},
             timing=dict(sweep_s=sweep_s, arms_s=arms_s), wall_s=time.perf_counter() - t_start)
    outdir = os.path.join(a.out, f"w_pre_{w_pre:g}")
    tr.write(r, outdir)
    print(f"w_pre={w_pre:g}: k* median {r['k_star_median']}, none {r['k_star_none']:.3f}, "
          f"monotone {r['monotone']:.3f}; best τ step {r['best_tau']['step']} copy "
          f"{r['best_tau']['copy']['rate']:.3f} align {r['best_tau']['alignment']['rate']:.3f}; "
          f"sweep {sweep_s:.0f} s → {outdir}")
    for o in r["oracle"]:
      print(f"  oracle k*+{o['j']}: copy {o['copy']['rate']:.3f} align {o['alignment']['rate']:.3f}")
    for name, d in list(r["detectors"].items()) + list(r["extra"].items()):
      g = d.get("lag") or {}
      print(f"  {name:24s} copy {d['copy']['rate']:.3f} align {d['alignment']['rate']:.3f} "
            f"lag median {g.get('median')} within±2 {g.get('within')} never {g.get('never_fired')}")
  print(f"total {time.perf_counter() - t_start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
