"""One run, one table: minidiff's training and sampling speed against the matmul peak, PyTorch eager
and `torch.compile`.

  pip install -e '.[bench]'              # torch==2.13.0 (CPU build), for the reference only
  python benchmarks/bench.py             # this CPU: JAX, PyTorch eager and torch.compile, ~15 min
  python benchmarks/bench.py --variants  # also the XLA:CPU variants (plain XLA, 2 devices, …)
  python benchmarks/bench.py --gpu       # a GPU: bf16 at CIFAR-10 scale
  python benchmarks/bench.py --fused     # also JAX with model.fused_layers=True, beside the plain JAX

Each setting runs in one fresh subprocess (XLA flags and allocator settings are fixed at process
start) that builds the JAX step, the PyTorch eager model and its `torch.compile`d copy side by side
and then times them interleaved: `--rounds` rounds, each timing every engine for `--steps` calls in
a rotating order, so a machine shared with other jobs slows all of them alike. Each engine's number
is the median over rounds of its per-round median; each ratio is the median of the per-round
ratios. Rows: training images/s and achieved GFLOP/s (FLOPs from XLA's cost analysis of the
unpartitioned step, ~3× the forward) against the measured matmul peak; DDIM-50 + CFG at batch 64
and the JAX sampler's overhead (one jitted scan against 50 forward passes at the doubled batch).
The PyTorch model is benchmarks/torch_unet.py; its parameter count is checked against JAX's for
both PyTorch columns. Prints a Markdown table and writes it, with the raw numbers, to --out.

`--fused` adds a fourth engine to every setting's process: the same JAX step with
`model.fused_layers=True` (minidiff/nn/unet.py: layers.GroupNorm and layers.self_attention), timed
in the same interleaved rounds, and one more row per setting whose notes give fused / plain JAX
(the median of the per-round ratios). Without torch installed the PyTorch columns say "not
installed" and JAX is timed alone.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, model overrides, batch): the default config, a 28×28 reference (docs/performance.md), GPU
# scale, and the tests' tiny model (a smoke check of this script: `--settings tiny --sample_setting
# tiny`; its numbers mean nothing).
SETTINGS = {
    "default": ("configs/mnist_dup.py", {}, 32),
    "mnist28": ("configs/mnist_dup.py", dict(resolution=28, attention_resolutions=(7,)), 64),
    "cifar": ("configs/cifar10_dup.py", {}, 512),
    "tiny": ("configs/tiny.py", {}, 8),
}
# XLA:CPU variants: what each sets before JAX starts (see minidiff/runtime.py).
CPU_VARIANTS = {
    "plain XLA": dict(MINIDIFF_CPU="off"),
    "Eigen convolutions": dict(MINIDIFF_CPU="off",
                               XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"),
    "2 CPU devices": dict(MINIDIFF_CPU="off", XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    "Eigen + malloc + 2 CPU devices": dict(MINIDIFF_CPU_DEVICES="2"),
    "minidiff default": {},  # runtime.configure_cpu(): whatever it chooses on this machine
}
ENGINES = ("jax", "eager", "compile")  # JAX, PyTorch eager, torch.compile (inductor)
FUSED = "jax_fused"  # JAX with model.fused_layers=True (--fused)
JAX_ENGINES = ("jax", FUSED)
TORCH_ENGINES = ("eager", "compile")


def _config(setting: str, dtype: str = "float32", *, fused: bool = False):
  import importlib.util
  path, model_kw, batch = SETTINGS[setting]
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  if "resolution" in model_kw:
    c.data.resolution = model_kw["resolution"]
  for k, v in model_kw.items():
    if k != "resolution":
      setattr(c.model, k, v)
  c.train.batch_size = batch
  c.model.compute_dtype = dtype
  c.model.fused_layers = fused
  return c


def _time(fn, repeats: int) -> float:
  """Median seconds of fn() (blocking) after one warm-up call."""
  fn()
  return _median_of(fn, repeats)


def _median_of(fn, repeats: int) -> float:
  """Median seconds of `repeats` blocking calls of fn() (no warm-up)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def _median(values):
  v = sorted(values)
  return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


# ---- JAX -------------------------------------------------------------------------------------------

def _jax_setup():
  from minidiff import runtime
  if os.environ.get("MINIDIFF_CPU") != "off":
    runtime.configure_cpu()
  import jax
  return dict(devices=len(jax.devices()), platform=jax.devices()[0].platform,
              xla_flags=os.environ.get("XLA_FLAGS", ""))


def jax_matmul(args) -> dict:
  import jax
  import jax.numpy as jnp
  out = _jax_setup()
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  n = 8192 if out["platform"] == "gpu" else 2048
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  dt = min(_time(lambda: f(a).block_until_ready(), 10) for _ in range(2))
  return dict(out, gflops=2 * n**3 / dt / 1e9, n=n)


def jax_train(args, flops_only: bool = False, *, fused: bool = False, compiler_options: dict | None = None):
  """(step() → None, info): one blocking minidiff training step of the setting, compiled.

  `fused`: the UNet with model.fused_layers=True. `compiler_options`: XLA DebugOptions fields by
  name, for this compilation only (benchmarks/xla_options.py).
  """
  info = _jax_setup()
  import jax
  import numpy as np

  from minidiff.train import sharding, trainer
  from minidiff.train import state as train_state

  c = _config(args.setting, args.dtype, fused=fused)
  mesh = sharding.data_mesh()
  graphdef, state, tx = train_state.init_state(c)
  b, r, ch = c.train.batch_size, c.data.resolution, c.data.channels
  rng = np.random.default_rng(0)
  params, opt, ema = (sharding.replicate(x, mesh) for x in (state.params, state.opt_state, state.ema_params))
  x, y = sharding.global_batch(mesh, rng.uniform(-1, 1, (b, r, r, ch)).astype(np.float32),
                               rng.integers(0, 10, b).astype(np.int32))
  key = sharding.replicate(jax.random.key(0), mesh)
  step_fn = trainer.step_function(c, graphdef, tx, mesh)
  t0 = time.perf_counter()
  lowered = step_fn.lower(params, opt, ema, x, y, key, 0)
  cost = lowered.cost_analysis()  # the unpartitioned step: all devices together (None on GPU)
  if flops_only:
    return None, dict(info, gflop_per_step=float(cost["flops"]) / 1e9)
  compiled = lowered.compile(compiler_options=compiler_options)
  # XLA:GPU gives no cost for the lowered step and leaves cuDNN convolutions out of the compiled
  # one: there the FLOPs come from a CPU lowering of the same step (`--task flops`).
  flops = float(cost["flops"]) if cost is not None else args.flops * 1e9
  holder = [params, opt, ema]
  last = {}

  def step():
    p, o, e, m = compiled(*holder, x, y, key, 1)
    holder[:] = [p, o, e]
    last["loss"] = m["loss"]
    m["loss"].block_until_ready()

  step()
  info.update(compile_s=time.perf_counter() - t0, batch=b, gflop_per_step=flops / 1e9,
              params=sum(p.size for p in jax.tree.leaves(state.params)))
  return step, info


def jax_sample(args, *, fused: bool = False):
  """(sample() → None, info): DDIM-50 + CFG (conditional and null halves batched, 2B per step).

  `fused`: the UNet with model.fused_layers=True.
  """
  info = _jax_setup()
  import jax
  import numpy as np
  from flax import nnx

  from minidiff import config as config_lib
  from minidiff.core import samplers
  from minidiff.core.guidance import make_strategy
  from minidiff.core.schedule import make_schedule
  from minidiff.train import precision, sharding
  from minidiff.train import state as train_state

  c = _config(args.setting, args.dtype, fused=fused)
  mesh = sharding.data_mesh()
  graphdef, state, _ = train_state.init_state(c)
  b, r, ch = args.sample_batch, c.data.resolution, c.data.channels
  rng = np.random.default_rng(0)
  null_id = config_lib.unet_config(c).null_id
  eps_apply = precision.with_compute_dtype(lambda p, x, t, cc: nnx.merge(graphdef, p)(x, t, cc),
                                           precision.compute_dtype(c))
  params = sharding.replicate(state.ema_params, mesh)
  x_T, cond = sharding.shard_rows(mesh, rng.standard_normal((b, r, r, ch)).astype(np.float32),  # noqa: N806
                                  np.arange(b, dtype=np.int32) % 10)
  null, = sharding.shard_rows(mesh, np.full((b,), null_id, np.int32))
  x2, c2 = sharding.shard_rows(mesh, np.concatenate([np.asarray(x_T)] * 2),
                               np.concatenate([np.asarray(cond), np.asarray(null)]))
  t2, = sharding.shard_rows(mesh, np.full((2 * b,), 500, np.int32))
  key = sharding.replicate(jax.random.key(1), mesh)
  fwd = jax.jit(eps_apply)
  run = samplers.make_sampler(eps_apply, schedule=make_schedule(c.diffusion.schedule, c.diffusion.T),
                              strategy=make_strategy("cfg", w=7.5), num_steps=50)
  t0 = time.perf_counter()
  run(params, x_T, cond, null, key)[0].block_until_ready()
  info.update(compile_s=time.perf_counter() - t0, batch=b,
              params=sum(p.size for p in jax.tree.leaves(state.params)))
  info["forward"] = lambda: fwd(params, x2, t2, c2).block_until_ready()
  info["forward"]()
  return (lambda: run(params, x_T, cond, null, key)[0].block_until_ready()), info


# ---- PyTorch ---------------------------------------------------------------------------------------

def _torch_model(args, compiled: bool):
  import torch

  from benchmarks.torch_unet import TorchUNet, count_params
  from minidiff import config as config_lib
  from minidiff.core.schedule import make_schedule

  dev = "cuda" if args.gpu else "cpu"
  c = _config(args.setting)
  cfg = config_lib.unet_config(c)
  torch.manual_seed(0)
  model = TorchUNet(cfg).to(dev)
  info = dict(params=count_params(model), threads=torch.get_num_threads(), version=torch.__version__,
              device=dev)
  run = torch.compile(model) if compiled else model  # inductor, default mode
  ab = torch.tensor(make_schedule(c.diffusion.schedule, c.diffusion.T).alpha_bar.tolist(), device=dev)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  autocast = lambda: torch.autocast(dev, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")  # noqa: E731
  return c, cfg, model, run, ab, sync, autocast, dev, info


def torch_train(args, compiled: bool):
  """(step() → None, info): the same training step (loss, AdamW, clipping, EMA) in PyTorch."""
  import torch
  c, cfg, model, run, ab, sync, autocast, dev, info = _torch_model(args, compiled)
  b, r, ch = c.train.batch_size, c.data.resolution, c.data.channels
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
  ema = [p.detach().clone() for p in model.parameters()]
  x0 = torch.rand(b, ch, r, r, device=dev) * 2 - 1
  y = torch.randint(0, 10, (b,), device=dev)

  def step():
    t = torch.randint(0, c.diffusion.T, (b,), device=dev)
    eps = torch.randn_like(x0)
    a = ab[t][:, None, None, None]
    cond = torch.where(torch.rand(b, device=dev) < 0.1, cfg.null_id, y)
    with autocast():
      loss = ((eps - run(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, cond).float()) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, list(model.parameters()), 1 - 0.999)
    sync()

  t0 = time.perf_counter()
  step()
  info.update(compile_s=time.perf_counter() - t0, batch=b)
  return step, info


def torch_sample(args, compiled: bool):
  """(sample() → None, info): DDIM-50 + CFG in PyTorch, conditional and null halves batched."""
  import torch
  c, cfg, model, run, ab, sync, autocast, dev, info = _torch_model(args, compiled)
  b, r, ch = args.sample_batch, c.data.resolution, c.data.channels
  x_T = torch.randn(b, ch, r, r, device=dev)  # noqa: N806
  cond = torch.arange(b, device=dev) % 10
  c2 = torch.cat([cond, torch.full_like(cond, cfg.null_id)])
  grid = torch.linspace(c.diffusion.T - 1, 0, 50, device=dev).round().long()
  model.eval()

  @torch.inference_mode()
  def sample():
    x = x_T
    for i, t in enumerate(grid):
      with autocast():
        e = run(torch.cat([x, x]), t.repeat(2 * b), c2).float()
      eps = e[b:] + 7.5 * (e[:b] - e[b:])
      a, a_prev = ab[t], (ab[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, device=dev))
      x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
      x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    sync()
    return x

  t0 = time.perf_counter()
  sample()
  info.update(compile_s=time.perf_counter() - t0, batch=b)
  return sample, info


# ---- one setting, every engine, interleaved ---------------------------------------------------------

def pair_worker(args) -> dict:
  """Runs in the subprocess: builds each engine of `--engines`, then times them interleaved.

  An engine's `jax_ratio` is JAX's speed over its own (the median of the per-round ratios), its
  `fused_ratio` the same for the fused JAX; the fused JAX's `speedup` is its speed over the plain
  JAX's. A PyTorch engine without torch installed is left out: {"not_installed": "torch"}.
  """
  engines = args.engines.split(",")
  build = {"train": dict(jax=lambda: jax_train(args), eager=lambda: torch_train(args, False),
                         compile=lambda: torch_train(args, True),
                         jax_fused=lambda: jax_train(args, fused=True)),
           "sample": dict(jax=lambda: jax_sample(args), eager=lambda: torch_sample(args, False),
                          compile=lambda: torch_sample(args, True),
                          jax_fused=lambda: jax_sample(args, fused=True))}[args.task]
  fns, out = {}, {}
  torch_missing = importlib.util.find_spec("torch") is None
  for e in sorted(engines, key=lambda e: e not in JAX_ENGINES):  # JAX first: it configures the CPU
    if e in TORCH_ENGINES and torch_missing:
      out[e] = {"not_installed": "torch"}
      continue
    fns[e], out[e] = build[e]()
  timed = [e for e in engines if e in fns]
  forwards = {e: out[e].pop("forward") for e in timed if "forward" in out[e]}
  params = {e: out[e]["params"] for e in timed}
  if len(set(params.values())) != 1:
    raise AssertionError(f"parameter counts differ: {params}")
  per_round = {e: [] for e in timed}
  t_fwd = {e: [] for e in forwards}
  for r in range(args.rounds):
    order = timed[r % len(timed):] + timed[:r % len(timed)]
    for e in order:
      per_round[e].append(_median_of(fns[e], args.steps))
    for e, forward in forwards.items():
      t_fwd[e].append(_median_of(forward, 5))
  ratio = lambda num, den: _median([a / b for a, b in zip(per_round[num], per_round[den])])  # noqa: E731
  for e in timed:
    t = _median(per_round[e])
    out[e].update(seconds=t, per_round=per_round[e], images_per_s=out[e]["batch"] / t)
    if e in TORCH_ENGINES:  # engine time / JAX time = JAX speed / engine speed
      out[e].update({k: ratio(e, j) for k, j in (("jax_ratio", "jax"), ("fused_ratio", FUSED))
                     if j in per_round})
  if FUSED in per_round and "jax" in per_round:
    out[FUSED]["speedup"] = ratio("jax", FUSED)  # plain time / fused time = fused speed / plain speed
  for e in JAX_ENGINES:
    if e not in per_round:
      continue
    j = out[e]
    if "gflop_per_step" in j:
      j["gflops"] = j["gflop_per_step"] / j["seconds"]
    if t_fwd.get(e):
      j["forward_s"] = _median(t_fwd[e])
      j["overhead"] = j["seconds"] / (50 * j["forward_s"])
      j["overhead_per_round"] = [ts / (50 * tf) for ts, tf in zip(per_round[e], t_fwd[e])]
  return out


def _spawn(kind: str, env: dict, **kw) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind]
  for k, v in kw.items():
    cmd += [f"--{k}", str(v)] if v is not True else [f"--{k}"]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  fmt = lambda d: ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else  # noqa: E731
                            f"{k}=[{', '.join(f'{x:.4g}' for x in v)}]" if isinstance(v, list) else
                            f"{k}={v}" for k, v in d.items())
  print(f"  {kind} {kw} {env or ''} ({time.perf_counter() - t0:.0f} s):", flush=True)
  for name, r in (result.items() if kind == "pair" else [("", result)]):
    print(f"    {name}: {fmt(r)}", flush=True)
  return result


HEADER = ["| measurement | setting | JAX | PyTorch eager | torch.compile | JAX / eager | JAX / compile | notes |",
          "|---|---|---|---|---|---|---|---|"]


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--worker", choices=("pair", "matmul", "flops"))
  p.add_argument("--task", default="train", choices=("train", "sample"))
  p.add_argument("--setting", default="default", choices=tuple(SETTINGS))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--engines", default=",".join(ENGINES), help="of jax,eager,compile,jax_fused")
  p.add_argument("--steps", type=int, default=5, help="timed training steps per engine and round")
  p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (training)")
  p.add_argument("--sample_rounds", type=int, default=2, help="interleaved rounds of one DDIM-50 call")
  p.add_argument("--sample_batch", type=int, default=64)
  p.add_argument("--settings", default="default,mnist28", help="CPU training settings")
  p.add_argument("--sample_setting", default="default", choices=tuple(SETTINGS),
                 help="CPU sampling setting")
  p.add_argument("--variants", action="store_true", help="CPU: also the XLA:CPU variants (JAX vs eager)")
  p.add_argument("--flops", type=float, default=float("nan"), help="GFLOP/step when XLA cannot count")
  p.add_argument("--gpu", action="store_true")
  p.add_argument("--fused", action="store_true",
                 help="also time JAX with model.fused_layers=True beside the plain JAX (one more row each)")
  p.add_argument("--gpu_runs", default="cifar:bfloat16", type=lambda v: [tuple(x.split(":")) for x in v.split(",")],
                 help="setting:dtype pairs trained on the GPU, e.g. cifar:bfloat16,default:float32")
  p.add_argument("--out", default=None, help="JSON + Markdown output (default benchmarks/results/results_<dev>.*)")
  args = p.parse_args()
  if args.worker:
    fn = dict(pair=pair_worker, matmul=jax_matmul, flops=lambda a: jax_train(a, flops_only=True)[1])
    print(json.dumps(fn[args.worker](args)))
    return
  t0 = time.perf_counter()
  rows, raw = (gpu_table if args.gpu else cpu_table)(args)
  table = "\n".join(HEADER + rows)
  print("\n" + table + f"\n\n({time.perf_counter() - t0:.0f} s)")
  out = args.out or os.path.join(ROOT, "benchmarks", "results", f"results_{'gpu' if args.gpu else 'cpu'}")
  with open(out + ".json", "w") as f:
    json.dump(raw, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(f"`python benchmarks/bench.py {' '.join(sys.argv[1:])}`\n\n{table}\n")


def _cell(r: dict | None) -> str:
  if r and "not_installed" in r:
    return "not installed"
  return f"{r['images_per_s']:.1f} img/s" if r else "—"


def _ratio(r: dict | None, key: str = "jax_ratio") -> str:
  """JAX speed / the engine's speed (`jax_ratio`: plain JAX, `fused_ratio`: fused JAX)."""
  if r and "not_installed" in r:
    return "not installed"
  return f"{r[key]:.2f}×" if r and key in r else "—"


def _engines(args) -> str:
  return ",".join(ENGINES + ((FUSED,) if args.fused else ()))


def _train_row(label: str, setting: str, res: dict, peak: float, *, fused: bool = False) -> str:
  j, key = (res[FUSED], "fused_ratio") if fused else (res["jax"], "jax_ratio")
  note = (f"fused / plain JAX {j['speedup']:.3f}× (median of per-round ratios); " if "speedup" in j
          else "")
  return (f"| training, {label} | {setting} | {_cell(j)} | {_cell(res.get('eager'))} | "
          f"{_cell(res.get('compile'))} | {_ratio(res.get('eager'), key)} | {_ratio(res.get('compile'), key)} | "
          f"{note}{j['gflops']:.0f} GFLOP/s = {j['gflops'] / peak:.0%} of the matmul peak; {j['params']:,} params "
          f"(checked); {j['devices']} device(s) |")


def _sample_row(label: str, setting: str, res: dict, *, fused: bool = False) -> str:
  j, key = (res[FUSED], "fused_ratio") if fused else (res["jax"], "jax_ratio")
  note = (f"fused / plain JAX {j['speedup']:.3f}× (median of per-round ratios); " if "speedup" in j
          else "")
  return (f"| DDIM-50 + CFG, batch {j['batch']}{label} | {setting} | {_cell(j)} | {_cell(res.get('eager'))} | "
          f"{_cell(res.get('compile'))} | {_ratio(res.get('eager'), key)} | {_ratio(res.get('compile'), key)} | "
          f"{note}scan / (50 × forward at 2×{j['batch']}) = {j['overhead']:.3f} (target ≤ 1.10) |")


def cpu_table(args):
  raw, rows = {}, []
  raw["matmul"] = _spawn("matmul", CPU_VARIANTS["plain XLA"])
  peak = raw["matmul"]["gflops"]
  rows.append(f"| float32 matmul 2048² (peak) | — | {peak:.0f} GFLOP/s | — | — | — | — | jnp, best median of 10 |")
  common = dict(steps=args.steps, rounds=args.rounds)
  for setting in args.settings.split(","):
    res = _spawn("pair", {}, task="train", setting=setting, engines=_engines(args), **common)
    raw[f"train/{setting}/minidiff default"] = res
    rows.append(_train_row("**minidiff default**", setting, res, peak))
    if args.fused:
      rows.append(_train_row("minidiff default, fused_layers=True", setting, res, peak, fused=True))
    if args.variants:
      for name, env in CPU_VARIANTS.items():
        if name != "minidiff default":
          res = _spawn("pair", env, task="train", setting=setting, engines="jax,eager", **common)
          raw[f"train/{setting}/{name}"] = res
          rows.append(_train_row(name, setting, res, peak))
  setting = args.sample_setting
  res = _spawn("pair", {}, task="sample", setting=setting, sample_batch=args.sample_batch, steps=1,
               rounds=args.sample_rounds, engines=_engines(args))
  raw[f"sample/{setting}"] = res
  rows.append(_sample_row("", setting, res))
  if args.fused:
    rows.append(_sample_row(", fused_layers=True", setting, res, fused=True))
  return rows, raw


def gpu_table(args):
  raw, rows = {}, []
  for dtype in ("float32", "bfloat16"):
    raw[f"matmul/{dtype}"] = _spawn("matmul", {}, dtype=dtype)
  rows.append(f"| matmul 8192² (peak) | — | f32 {raw['matmul/float32']['gflops'] / 1e3:.0f} TFLOP/s, bf16 "
              f"{raw['matmul/bfloat16']['gflops'] / 1e3:.0f} TFLOP/s | — | — | — | — | jnp |")
  # One GPU lease is 15 minutes and each XLA:GPU compile of these UNets takes ~2 minutes: the
  # CIFAR-10 scale model (Gu et al.: 128 channels, batch 512) in bf16, training and sampling.
  for setting, dtype in args.gpu_runs:
    peak = raw[f"matmul/{dtype}"]["gflops"]
    flops = _spawn("flops", dict(JAX_PLATFORMS="cpu"), setting=setting, dtype=dtype)
    res = _spawn("pair", {}, task="train", setting=setting, dtype=dtype, steps=args.steps,
                 rounds=args.rounds, flops=flops["gflop_per_step"], gpu=True, engines=_engines(args))
    raw[f"train/{setting}/{dtype}"] = res
    rows.append(_train_row(dtype, setting, res, peak))
    if args.fused:  # FLOPs of the plain step's CPU lowering (XLA:GPU counts none)
      rows.append(_train_row(f"{dtype}, fused_layers=True", setting, res, peak, fused=True))
  res = _spawn("pair", {}, task="sample", setting="cifar", dtype="bfloat16", sample_batch=256, steps=1,
               rounds=args.sample_rounds, gpu=True, engines=_engines(args))
  raw["sample/bfloat16"] = res
  rows.append(_sample_row(", bf16", "cifar", res))
  if args.fused:
    rows.append(_sample_row(", bf16, fused_layers=True", "cifar", res, fused=True))
  return rows, raw


if __name__ == "__main__":
  main()
