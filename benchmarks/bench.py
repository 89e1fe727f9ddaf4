"""One run, one table: minidiff's training and sampling speed against the matmul peak and PyTorch.

  pip install -e '.[bench]'            # torch==2.13.0 (CPU build), for the reference only
  python benchmarks/bench.py           # this CPU: XLA variants, PyTorch eager, ~10 min
  python benchmarks/bench.py --gpu     # a GPU: float32 and bf16, CIFAR-10 scale too

Every measurement runs in a fresh subprocess (XLA flags and allocator settings are fixed at process
start). Rows: training images/s and achieved GFLOP/s (FLOPs from XLA's cost analysis of the
unpartitioned step, ~3× the forward) against the measured matmul peak; the sampler's overhead ratio
(one jitted DDIM-50 + CFG scan against 50 forward passes at the doubled batch); and the same UNet in
PyTorch (benchmarks/torch_unet.py, parameter count checked) for the training step and DDIM-50 + CFG.
Prints a Markdown table and writes it, with the raw numbers, to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, model overrides, batch): the default config, a 28×28 reference (docs/performance.md), and
# GPU scale.
SETTINGS = {
    "default": ("configs/mnist_dup.py", {}, 32),
    "mnist28": ("configs/mnist_dup.py", dict(resolution=28, attention_resolutions=(7,)), 64),
    "cifar": ("configs/cifar10_dup.py", {}, 512),
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


def _config(setting: str, dtype: str = "float32"):
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
  return c


def _time(fn, repeats: int) -> float:
  """Median seconds of fn() (blocking) after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def jax_worker(args) -> dict:
  """Runs in the subprocess: one JAX measurement."""
  from minidiff import runtime
  if os.environ.get("MINIDIFF_CPU") != "off":
    runtime.configure_cpu()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from minidiff import config as config_lib
  from minidiff.core import samplers
  from minidiff.core.guidance import make_strategy
  from minidiff.core.schedule import make_schedule
  from minidiff.train import precision, sharding, trainer
  from minidiff.train import state as train_state

  out = dict(devices=len(jax.devices()), platform=jax.devices()[0].platform,
             xla_flags=os.environ.get("XLA_FLAGS", ""))
  if args.task == "matmul":
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    n = 8192 if out["platform"] == "gpu" else 2048
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    dt = min(_time(lambda: f(a).block_until_ready(), 10) for _ in range(2))
    return dict(out, gflops=2 * n**3 / dt / 1e9, n=n)

  c = _config(args.setting, args.dtype)
  mesh = sharding.data_mesh()
  graphdef, state, tx = train_state.init_state(c)
  b, r, ch = c.train.batch_size, c.data.resolution, c.data.channels
  rng = np.random.default_rng(0)
  if args.task in ("train", "flops"):
    params, opt, ema = (sharding.replicate(x, mesh) for x in (state.params, state.opt_state, state.ema_params))
    x, y = sharding.global_batch(mesh, rng.uniform(-1, 1, (b, r, r, ch)).astype(np.float32),
                                 rng.integers(0, 10, b).astype(np.int32))
    key = sharding.replicate(jax.random.key(0), mesh)
    step_fn = trainer.step_function(c, graphdef, tx, mesh)
    t0 = time.perf_counter()
    lowered = step_fn.lower(params, opt, ema, x, y, key, 0)
    cost = lowered.cost_analysis()  # the unpartitioned step: all devices together (None on GPU)
    if args.task == "flops":
      return dict(out, gflop_per_step=float(cost["flops"]) / 1e9)
    compiled = lowered.compile()
    # XLA:GPU gives no cost for the lowered step and leaves cuDNN convolutions out of the compiled
    # one: there the FLOPs come from a CPU lowering of the same step (task "flops").
    flops = float(cost["flops"]) if cost is not None else args.flops * 1e9
    out["compile_s"] = time.perf_counter() - t0
    holder = [params, opt, ema]

    def step():
      p, o, e, m = compiled(*holder, x, y, key, 1)
      holder[:] = [p, o, e]
      m["loss"].block_until_ready()

    for _ in range(2):
      step()
    dt = _time(step, args.steps)
    loss = float(compiled(*holder, x, y, key, 1)[3]["loss"])
    return dict(out, step_s=dt, images_per_s=b / dt, gflop_per_step=flops / 1e9, gflops=flops / dt / 1e9,
                params=sum(p.size for p in jax.tree.leaves(state.params)), loss=loss)

  # Sampler: DDIM-50 + CFG, the conditional and null halves batched (2B per step).
  b = args.sample_batch
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
  t_fwd = _time(lambda: fwd(params, x2, t2, c2).block_until_ready(), 10)
  run = samplers.make_sampler(eps_apply, schedule=make_schedule(c.diffusion.schedule, c.diffusion.T),
                              strategy=make_strategy("cfg", w=7.5), num_steps=50)
  t_scan = _time(lambda: run(params, x_T, cond, null, key)[0].block_until_ready(), 3)
  return dict(out, batch=b, forward_s=t_fwd, scan_s=t_scan, images_per_s=b / t_scan,
              overhead=t_scan / (50 * t_fwd))


def torch_worker(args) -> dict:
  """Runs in the subprocess: the same UNet in PyTorch eager (CPU, or CUDA with --gpu)."""
  import torch

  from benchmarks.torch_unet import TorchUNet, count_params
  from minidiff import config as config_lib
  from minidiff.core.schedule import make_schedule

  dev = "cuda" if args.gpu else "cpu"
  c = _config(args.setting)
  cfg = config_lib.unet_config(c)
  model = TorchUNet(cfg).to(dev)
  b, r, ch = c.train.batch_size, c.data.resolution, c.data.channels
  ab = torch.tensor(make_schedule(c.diffusion.schedule, c.diffusion.T).alpha_bar.tolist(), device=dev)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  out = dict(params=count_params(model), threads=torch.get_num_threads(), version=torch.__version__,
             device=dev)
  autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
  if args.task == "train":
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ema = [p.detach().clone() for p in model.parameters()]
    x0 = torch.rand(b, ch, r, r, device=dev) * 2 - 1
    y = torch.randint(0, 10, (b,), device=dev)

    def step():
      t = torch.randint(0, c.diffusion.T, (b,), device=dev)
      eps = torch.randn_like(x0)
      a = ab[t][:, None, None, None]
      cond = torch.where(torch.rand(b, device=dev) < 0.1, cfg.null_id, y)
      with autocast:
        loss = ((eps - model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, cond).float()) ** 2).mean()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      with torch.no_grad():
        torch._foreach_lerp_(ema, list(model.parameters()), 1 - 0.999)
      sync()

    for _ in range(3):
      step()
    dt = _time(step, args.steps)
    return dict(out, step_s=dt, images_per_s=b / dt)

  b = args.sample_batch
  x_T = torch.randn(b, ch, r, r, device=dev)  # noqa: N806
  cond = torch.arange(b, device=dev) % 10
  c2 = torch.cat([cond, torch.full_like(cond, cfg.null_id)])
  grid = torch.linspace(c.diffusion.T - 1, 0, 50, device=dev).round().long()

  @torch.inference_mode()
  def sample():
    x = x_T
    for i, t in enumerate(grid):
      with autocast:
        e = model(torch.cat([x, x]), t.repeat(2 * b), c2).float()
      eps = e[b:] + 7.5 * (e[:b] - e[b:])
      a, a_prev = ab[t], (ab[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, device=dev))
      x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
      x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    sync()
    return x

  t_scan = _time(sample, 3)
  return dict(out, batch=b, scan_s=t_scan, images_per_s=b / t_scan)


def _spawn(kind: str, env: dict, **kw) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind]
  for k, v in kw.items():
    cmd += [f"--{k}", str(v)] if v is not True else [f"--{k}"]
  proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  print(f"  {kind} {kw} {env or ''}: " + ", ".join(
      f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()), flush=True)
  return result


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--worker", choices=("jax", "torch"))
  p.add_argument("--task", default="train", choices=("train", "sample", "matmul", "flops"))
  p.add_argument("--setting", default="default", choices=tuple(SETTINGS))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--sample_batch", type=int, default=64)
  p.add_argument("--flops", type=float, default=float("nan"), help="GFLOP/step when XLA cannot count")
  p.add_argument("--gpu", action="store_true")
  p.add_argument("--gpu_runs", default="cifar:bfloat16", type=lambda v: [tuple(x.split(":")) for x in v.split(",")],
                 help="setting:dtype pairs trained on the GPU, e.g. cifar:bfloat16,default:float32")
  p.add_argument("--out", default=None, help="JSON + Markdown output (default benchmarks/results_<dev>.*)")
  args = p.parse_args()
  if args.worker:
    print(json.dumps((jax_worker if args.worker == "jax" else torch_worker)(args)))
    return
  rows, raw = (gpu_table if args.gpu else cpu_table)(args)
  table = "\n".join(["| measurement | setting | JAX | PyTorch eager | JAX / PyTorch | notes |",
                     "|---|---|---|---|---|---|"] + rows)
  print("\n" + table)
  out = args.out or os.path.join(ROOT, "benchmarks", "results", f"results_{'gpu' if args.gpu else 'cpu'}")
  with open(out + ".json", "w") as f:
    json.dump(raw, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(f"`python benchmarks/bench.py{' --gpu' if args.gpu else ''}`\n\n{table}\n")


def _train_rows(label, setting, jax_r, torch_r, peak) -> str:
  ratio = jax_r["images_per_s"] / torch_r["images_per_s"] if torch_r else float("nan")
  assert not torch_r or torch_r["params"] == jax_r["params"], (torch_r["params"], jax_r["params"])
  torch_s = f"{torch_r['images_per_s']:.1f} img/s" if torch_r else "—"
  return (f"| training, {label} | {setting} | {jax_r['images_per_s']:.1f} img/s | {torch_s} | {ratio:.2f}× | "
          f"{jax_r['gflops']:.0f} GFLOP/s = {jax_r['gflops'] / peak:.0%} of the matmul peak; "
          f"{jax_r['params']:,} params; {jax_r['devices']} device(s) |")


def cpu_table(args):
  raw, rows = {}, []
  raw["matmul"] = _spawn("jax", CPU_VARIANTS["plain XLA"], task="matmul")
  peak = raw["matmul"]["gflops"]
  rows.append(f"| float32 matmul 2048² (peak) | — | {peak:.0f} GFLOP/s | — | — | jnp, best median of 10 |")
  torch_train = {s: _spawn("torch", {}, task="train", setting=s, steps=args.steps) for s in ("mnist28", "default")}
  raw["torch_train"] = torch_train
  for setting in ("mnist28", "default"):
    for name, env in CPU_VARIANTS.items():
      if setting == "default" and name not in ("plain XLA", "minidiff default"):
        continue
      r = _spawn("jax", env, task="train", setting=setting, steps=args.steps)
      raw[f"train/{setting}/{name}"] = r
      rows.append(_train_rows(name, setting, r, torch_train[setting], peak))
  js = _spawn("jax", {}, task="sample", setting="default", sample_batch=args.sample_batch)
  ts = _spawn("torch", {}, task="sample", setting="default", sample_batch=args.sample_batch)
  raw["sample"] = dict(jax=js, torch=ts)
  rows.append(f"| DDIM-50 + CFG, batch {js['batch']} | default | {js['images_per_s']:.1f} img/s | "
              f"{ts['images_per_s']:.1f} img/s | {js['images_per_s'] / ts['images_per_s']:.2f}× | "
              f"minidiff default; scan / (50 × forward at 2×{js['batch']}) = {js['overhead']:.3f} (target ≤ 1.10) |")
  return rows, raw


def gpu_table(args):
  raw, rows = {}, []
  for dtype in ("float32", "bfloat16"):
    raw[f"matmul/{dtype}"] = _spawn("jax", {}, task="matmul", dtype=dtype)
  rows.append(f"| matmul 8192² (peak) | — | f32 {raw['matmul/float32']['gflops'] / 1e3:.0f} TFLOP/s, bf16 "
              f"{raw['matmul/bfloat16']['gflops'] / 1e3:.0f} TFLOP/s | — | — | jnp |")
  # One GPU lease is 15 minutes and each XLA:GPU compile of these UNets takes ~2 minutes: the
  # CIFAR-10 scale model (Gu et al.: 128 channels, batch 512) in bf16, training and sampling.
  for setting, dtype in args.gpu_runs:
    peak = raw[f"matmul/{dtype}"]["gflops"]
    flops = _spawn("jax", dict(JAX_PLATFORMS="cpu"), task="flops", setting=setting, dtype=dtype)
    r = _spawn("jax", {}, task="train", setting=setting, dtype=dtype, steps=args.steps,
               flops=flops["gflop_per_step"])
    t = _spawn("torch", {}, task="train", setting=setting, dtype=dtype, steps=args.steps, gpu=True)
    raw[f"train/{setting}/{dtype}"] = dict(jax=r, torch=t)
    rows.append(_train_rows(dtype, setting, r, t, peak))
  for dtype in ("bfloat16",):
    ts = _spawn("torch", {}, task="sample", setting="cifar", dtype=dtype, sample_batch=256, gpu=True)
    js = _spawn("jax", {}, task="sample", setting="cifar", dtype=dtype, sample_batch=256)
    raw[f"sample/{dtype}"] = dict(jax=js, torch=ts)
    rows.append(f"| DDIM-50 + CFG, batch 256, {dtype} | cifar | {js['images_per_s']:.1f} img/s | "
                f"{ts['images_per_s']:.1f} img/s | {js['images_per_s'] / ts['images_per_s']:.2f}× | "
                f"overhead {js['overhead']:.3f} |")
  return rows, raw


if __name__ == "__main__":
  main()
