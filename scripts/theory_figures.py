"""Basin theory on exact denoisers: the numbers and figures of docs/theory.md.

  python scripts/theory_figures.py [--n 200] [--out docs/figures]

Condition 3 = π·atom(the first "3") + (1−π)·Gaussian(the "3"s), condition 7 = Gaussian(the "7"s),
null = Gaussian(all 5,000 offline MNIST images), 16×16; deterministic DDIM, 50 linspace steps,
x̂₀ clipped, w_post = 7.5 (see minidiff/theory/basin.py). Prints every number the doc quotes and writes
docs/figures/theory_{d_curves,basin,copy_vs_tau}.png. About 2 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minidiff.theory import basin  # noqa: E402
from minidiff.data import datasets as data  # noqa: E402
from minidiff.study import plots  # noqa: E402
from minidiff.core import samplers  # noqa: E402
from minidiff.theory.basin import Arm, cfg  # noqa: E402
from minidiff.core.schedule import linear_schedule  # noqa: E402

S, MEM, CTRL = 50, 3, 7
SCHEDULE = linear_schedule(1000)
GRID = samplers.time_grid(1000, S, "linspace")
SWEEP = list(range(0, S, 2))
BASIN_T = (999, 900, 800, 700, 600, 500, 400, 300, 200, 100)


def pct(x: np.ndarray) -> str:
  return f"{np.mean(x):.3f}"


def spread(x: np.ndarray) -> str:
  """median [10th, 90th percentile]."""
  return f"{np.median(x):.2f} [{np.percentile(x, 10):.2f}, {np.percentile(x, 90):.2f}]"


def main_sweep(setup, run, noise):
  """Claims 1–4: every arm from the same noises."""
  arms = {"none": cfg(0), "cond": cfg(1), "cfg": cfg(7.5), "dyn_og": Arm(-2, rule="x0"),
          "dyn_og75": Arm(-7.5, rule="x0"), "dyn_0": Arm(0, rule="x0"), "dyn_1": Arm(1, rule="x0"),
          "dyn_og_eps": Arm(-2, rule="eps"), "dyn_1_eps": Arm(1, rule="eps"),
          "ctrl_none": cfg(0, CTRL), "ctrl_cond": cfg(1, CTRL), "ctrl_cfg": cfg(7.5, CTRL),
          "ctrl_dyn_og": Arm(-2, rule="x0", cond=CTRL)}
  for w_pre in (0, -2):
    arms |= {f"static{w_pre}_{k}": Arm(w_pre, tau=int(GRID[k])) for k in SWEEP}
  x0, diag = basin.run_arms(run, setup, noise, list(arms.values()))
  labels = basin.nearest_labels(x0, setup)
  names = list(arms)
  r = {"arms": arms, "t": diag.t, "copy": dict(zip(names, basin.copies(x0, setup))),
       "cls": {nm: labels[i] == (arms[nm].cond or MEM) for i, nm in enumerate(names)},
       "fired": dict(zip(names, diag.transition_step)),
       "d_x0": {nm: diag.d_x0[:, i] for i, nm in enumerate(names)},
       "d_eps": {nm: diag.d_eps[:, i] for i, nm in enumerate(names)}}
  r["sweep"] = {w: np.stack([r["copy"][f"static{w}_{k}"] for k in SWEEP]) for w in (0, -2)}
  r["sweep_cls"] = {w: np.stack([r["cls"][f"static{w}_{k}"] for k in SWEEP]) for w in (0, -2)}
  r["k_star"] = {w: basin.transition_from_sweep(r["sweep"][w], SWEEP, S) for w in (0, -2)}
  return r


def report_claims_1_2(r, n):
  c, fired, t = r["copy"], r["fired"], r["t"]
  print(f"\n== Claim 1 (n = {n}): copy rate  w=0 {pct(c['none'])}  w=1 {pct(c['cond'])}  "
        f"CFG 7.5 {pct(c['cfg'])} (class {pct(r['cls']['cfg'])})")
  print(f"   control (7): class agreement w=0 {pct(r['cls']['ctrl_none'])}  w=1 "
        f"{pct(r['cls']['ctrl_cond'])}  CFG 7.5 {pct(r['cls']['ctrl_cfg'])}")
  print("== Claim 2: d_x0 first step, depth = min/running peak for t ≥ 200, median [p10, p90];"
        " d_eps median first/last step, fraction of samples with d_eps rising at every step")
  for nm in ("none", "ctrl_none", "cond", "ctrl_cond", "dyn_og", "ctrl_dyn_og"):
    med_eps = np.median(r["d_eps"][nm], axis=1)
    mono = np.mean(np.all(np.diff(r["d_eps"][nm], axis=0) > 0, axis=0))
    print(f"  {nm:12s} d_x0 {np.median(r['d_x0'][nm][0]):.2f}, depth "
          f"{spread(basin.drop_depth(r['d_x0'][nm], t))} | d_eps {med_eps[0]:.3f} → "
          f"{med_eps[-1]:.2f}, rising {mono:.2f}, median curve rising "
          f"{bool(np.all(np.diff(med_eps) > 0))}")
  for nm in ("dyn_og", "dyn_og75", "dyn_0", "dyn_1", "dyn_og_eps", "dyn_1_eps", "ctrl_dyn_og"):
    f = fired[nm]
    step = np.median(f[f >= 0]) if (f >= 0).any() else -1
    print(f"  rule {nm:12s} fired {np.mean(f >= 0):.3f}, median step {step:.0f}, copy {pct(c[nm])},"
          f" class {pct(r['cls'][nm])}")
  ok = fired["dyn_og"] >= 0
  lag = (fired["dyn_og"] - r["k_star"][-2])[ok]
  print(f"  dyn_og firing step − transition k* (fired samples): {spread(lag)}, "
        f"before k*: {np.mean(lag < 0):.3f}")
  d, k = r["d_x0"]["dyn_og"][:, ok], fired["dyn_og"][ok] - 1
  at_min = d[k, np.arange(k.size)] / np.maximum.accumulate(d, axis=0)[k, np.arange(k.size)]
  print(f"  d_x0 at the minimum the rule fires on / running peak: {spread(at_min)}")


def report_claims_3_4(r):
  fired = r["fired"]["dyn_og"]
  print("== Claim 3: copy / class agreement vs the step k of a static switch (τ = t_k)")
  for w in (0, -2):
    cells = zip(SWEEP, r["sweep"][w].mean(1), r["sweep_cls"][w].mean(1))
    print(f"  w_pre={w:2d} " + " ".join(f"k{k}(t{GRID[k]}):{a:.2f}/{b:.2f}" for k, a, b in cells))
  ok = fired >= 0
  for delta in (6, 10, 14):
    idx = [max([j for j, k in enumerate(SWEEP) if k <= f - delta] or [0]) for f in fired[ok]]
    copied = r["sweep"][-2][:, ok][idx, np.arange(len(idx))]
    print(f"  switch ≥ {delta} steps before the detected transition: copy {copied.mean():.3f}")
  for w in (0, -2):
    mono = np.mean(np.all(np.diff(r["sweep"][w].astype(int), axis=0) <= 0, axis=0))
    print(f"  w_pre={w}: copy monotone in the switch step for {mono:.3f} of samples; "
          f"k* median {np.median(r['k_star'][w]):.0f}")
  k0, k2 = r["k_star"][0], r["k_star"][-2]
  both = (k0 < S) & (k2 < S) & (k0 > SWEEP[0])
  print(f"== Claim 4: per-sample transition k*, OG (w_pre=−2) vs w_pre=0, n={both.sum()}: "
        f"earlier or equal {np.mean(k2[both] <= k0[both]):.3f}, strictly earlier "
        f"{np.mean(k2[both] < k0[both]):.3f}, mean {np.mean(k0[both] - k2[both]):.2f} steps "
        "earlier")


def basin_curve(setup, run, n):
  """Claim 5: fraction of x_t ~ q_t(null) that CFG / w = 1 carry to the atom, and r_atom(x_t)."""
  rows = []
  for t0 in BASIN_T:
    x_t = basin.marginal_draw(setup.denoiser.null, SCHEDULE, t0, n, np.random.default_rng(1))
    x0, _ = basin.run_arms(run, setup, x_t, [cfg(7.5), cfg(3), cfg(1)], t0=t0)
    resp = basin.atom_responsibility(setup, x_t, np.full(n, t0))
    rows.append(np.append(basin.copies(x0, setup).mean(1), resp.mean()))
  rows = np.array(rows)
  print("== Claim 5: basin fraction (x_t ~ null marginal)  t: CFG 7.5 / CFG 3 / w=1 / mean r_atom")
  for t0, row in zip(BASIN_T, rows):
    print(f"  t={t0:4d}: " + " / ".join(f"{v:.3f}" for v in row))
  return rows


def atom_weight_table(images, labels, run, noise):
  print("== Boundary of claim 1: copy rate vs the atom weight π "
        "(w=0 / w=1 / CFG 3 / CFG 7.5 / static w_pre=0 τ=t_24)")
  for pi in (0.1, 0.3, 0.5, 0.7, 0.9):
    setup = basin.build_setup(images, labels, SCHEDULE, atom_weight=pi)
    x0, _ = basin.run_arms(run, setup, noise, [cfg(0), cfg(1), cfg(3), cfg(7.5),
                                               Arm(0, tau=int(GRID[24]))])
    print(f"  π={pi}: " + " / ".join(f"{v:.3f}" for v in basin.copies(x0, setup).mean(1)))


def resolution_table(n, atom_weight):
  """Boundary: the same construction at 8×8, 16×16 and 28×28 (D = 64, 256, 784)."""
  ks = (14, 24, 34)
  arms = ([cfg(1), cfg(3), cfg(7.5)] + [Arm(0, w_post=3, tau=int(GRID[k])) for k in ks]
          + [Arm(-2, w_post=3, tau=int(GRID[k])) for k in ks])
  print(f"== Boundary, resolution (π = {atom_weight}): copy rate for w=1 / CFG 3 / CFG 7.5 | "
        f"static w_pre=0 → w_post=3 at τ = {' / '.join(str(GRID[k]) for k in ks)} | same with "
        "w_pre=−2; (median ‖x − a‖ under CFG 7.5)")
  run = basin.make_runner(num_steps=S)
  for res in (8, 16, 28):
    ds = data.load_dataset("mnist_offline", resolution=res)
    setup = basin.build_setup(ds.images, ds.labels, SCHEDULE, atom_weight=atom_weight)
    noise = np.random.default_rng(0).standard_normal((n, res, res, 1)).astype(np.float32)
    x0, _ = basin.run_arms(run, setup, noise, arms)
    rate = basin.copies(x0, setup).mean(1)
    dist = np.median(np.linalg.norm((x0[2] - setup.atom).reshape(n, -1), axis=1))
    print(f"  {res:2d}×{res:<2d}: " + " / ".join(f"{v:.3f}" for v in rate[:3]) + " | "
          + " / ".join(f"{v:.3f}" for v in rate[3:6]) + " | "
          + " / ".join(f"{v:.3f}" for v in rate[6:]) + f"  ({dist:.2f}, ‖a‖ = "
          f"{np.linalg.norm(setup.atom):.2f})")


def plot_d_curves(r, path, shown=16):
  t = r["t"]
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
  panels = [("none", "ctrl_none", "unguided trajectories (w = 0)"),
            ("dyn_og", "ctrl_dyn_og", "OG w_pre = −2, dynamic rule (x̂₀) → 7.5")]
  for col, (mem, ctrl, title) in enumerate(panels):
    for row, (key, label) in enumerate([("d_eps", "‖ε_c − ε_u‖"), ("d_x0", "‖x̂₀_c − x̂₀_u‖")]):
      ax = axes[row, col]
      for nm, color in ((mem, "tab:red"), (ctrl, "tab:blue")):
        d = r[key][nm]
        ax.plot(t, d[:, :shown], color=color, alpha=0.25, lw=0.8)
        ax.plot(t, np.median(d, axis=1), color=color, lw=2.2,
                label=("memorized (3)" if nm == mem else "control (7)") + ", median")
        f = r["fired"][nm][:shown]
        ok = f >= 0
        ax.scatter(t[f[ok]], d[f[ok], np.arange(shown)[ok]], color=color, marker="v", s=28,
                   zorder=3, edgecolor="k", lw=0.5)
      if col == 1 and row == 1:
        k_star = r["k_star"][-2][:shown]
        ax.scatter(t[np.minimum(k_star, S - 1)], np.full(shown, 0.15), marker="|", s=120,
                   color="k", label="transition k* (τ sweep)")
      ax.set_yscale("log")
      ax.set_xlim(1000, 0)
      ax.set_ylabel(label)
      ax.set_title(f"{label}: {title}", fontsize=9)
      ax.legend(fontsize=7)
  for ax in axes[1]:
    ax.set_xlabel("t (▼ = dynamic rule fired)")
  plots.save_figure(fig, path)


def plot_basin(rows, path):
  fig, ax = plt.subplots(figsize=(6, 4))
  for j, label in enumerate(["CFG w = 7.5", "CFG w = 3", "conditional w = 1",
                             "mean atom responsibility r_atom(x_t)"]):
    ax.plot(BASIN_T, rows[:, j], marker="o" if j < 3 else None, ls="-" if j < 3 else "--",
            label=label)
  ax.set_xlim(1000, 0)
  ax.set_xlabel("start time t of guidance (x_t ~ null marginal)")
  ax.set_ylabel("fraction carried to the memorized image")
  ax.legend(fontsize=8)
  plots.save_figure(fig, path)


def plot_copy_vs_tau(r, path):
  taus = GRID[SWEEP]
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for w, color, label in ((0, "tab:orange", "delayed CFG, w_pre = 0"),
                          (-2, "tab:purple", "opposite guidance, w_pre = −2")):
    ax.plot(taus, r["sweep"][w].mean(1), color=color, marker="o", ms=3, label=f"{label}: copy rate")
    ax.plot(taus, r["sweep_cls"][w].mean(1), color=color, ls=":", label=f"{label}: class agreement")
  ax.axhline(np.mean(r["copy"]["cfg"]), color="k", lw=0.8, label="CFG from the start: copy rate")
  ax.set_xlim(1000, 0)
  ax.set_xlabel("static transition τ (w_post = 7.5 for t ≤ τ)")
  ax.set_ylabel("fraction")
  ax.legend(fontsize=7)
  plots.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=200, help="initial noises per arm")
  parser.add_argument("--atom-weight", type=float, default=0.7, help="π of the memorized condition")
  parser.add_argument("--out", default=os.path.join("docs", "figures"))
  args = parser.parse_args(argv)
  start = time.time()
  os.makedirs(args.out, exist_ok=True)
  ds = data.load_dataset("mnist_offline", resolution=16)
  setup = basin.build_setup(ds.images, ds.labels, SCHEDULE, atom_weight=args.atom_weight)
  run = basin.make_runner(num_steps=S)
  noise = np.random.default_rng(0).standard_normal((args.n, 16, 16, 1)).astype(np.float32)
  r = main_sweep(setup, run, noise)
  report_claims_1_2(r, args.n)
  report_claims_3_4(r)
  plot_d_curves(r, os.path.join(args.out, "theory_d_curves.png"))
  plot_copy_vs_tau(r, os.path.join(args.out, "theory_copy_vs_tau.png"))
  plot_basin(basin_curve(setup, run, args.n), os.path.join(args.out, "theory_basin.png"))
  atom_weight_table(ds.images, ds.labels, run, noise)
  resolution_table(args.n, args.atom_weight)
  print(f"\nfigures in {args.out}; {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
