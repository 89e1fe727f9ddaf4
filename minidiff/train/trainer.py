"""DDPM training: ε-prediction MSE with condition dropout, AdamW, EMA, checkpoints and resume.

The loss is Ho et al.'s simplified objective L = E_{t, x₀, ε} ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t, c)‖²,
with c replaced by the null condition with probability p_uncond (Ho & Salimans' classifier-free
guidance): the null class id, or for a text model the empty caption's tokens.
Every random draw of step s comes from fold_in(seed, s), and the data order is a function of
(seed, step), so a resumed run is bitwise the run that was never interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from minidiff import config as config_lib
from minidiff.core.schedule import NoiseSchedule, make_schedule
from minidiff.nn.unet import UNet, count_params
from minidiff.train import monitor as monitor_lib
from minidiff.train import precision, sharding
from minidiff.train.checkpoint import Checkpointer
from minidiff.train.inputs import load_training_data, null_condition, training_conditions
from minidiff.train.state import TrainState, init_state, restore_state

log = logging.getLogger(__name__)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Indices of batch `step`: epoch e visits a permutation seeded by (seed, e). Depends on step only."""
  pos = step * batch_size + np.arange(batch_size)
  epochs, offsets = pos // num_examples, pos % num_examples
  perms = {e: np.random.default_rng([seed, int(e)]).permutation(num_examples) for e in np.unique(epochs)}
  return np.asarray([perms[e][o] for e, o in zip(epochs, offsets)])


def diffusion_loss(model: UNet, schedule: NoiseSchedule, x0: jax.Array, labels: jax.Array,
                   key: jax.Array, *, p_uncond: float, null_id: int | np.ndarray, train: bool = True,
                   compute_dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """Monte-Carlo estimate of ‖ε − ε_θ(x_t, t, c)‖² (mean over pixels and batch), in float32.

  The UNet sees x_t in `compute_dtype` (its parameters must already be in that dtype). `labels`
  are class ids [B] with `null_id` an int, or token ids [B, L] with `null_id` the empty caption's
  tokens [L]; a dropped condition becomes the null one.
  """
  k_t, k_eps, k_drop, k_dropout = jax.random.split(key, 4)
  b = x0.shape[0]
  t = jax.random.randint(k_t, (b,), 0, schedule.T)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = schedule.q_sample(x0, t, eps)  # Ho et al. eq. 4
  drop = jax.random.bernoulli(k_drop, p_uncond, (b,)).reshape((b,) + (1,) * (labels.ndim - 1))
  cond = jnp.where(drop, null_id, labels)
  eps_hat = model(x_t.astype(compute_dtype), t, cond, dropout_key=k_dropout if train else None)
  return jnp.mean((eps - eps_hat.astype(jnp.float32)) ** 2)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: NoiseSchedule, *, p_uncond: float, null_id: int,
                    ema_decay: float, compute_dtype: jnp.dtype = jnp.float32,
                    mesh: Mesh | None = None) -> Callable:
  """A jitted `(params, opt_state, ema, x0, labels, key, step) → (params, opt_state, ema, metrics)`.

  params, opt_state and ema are donated: the step updates them in place. The same function runs
  on one device or data-parallel: place the state replicated and x0/labels batch-sharded (see
  `minidiff.train.sharding`) and XLA partitions the step, inserting the gradient all-reduce; with `mesh`
  the outputs are pinned replicated, so the next call sees the same shardings (no recompile). With a
  bf16 `compute_dtype` the forward and backward run in bf16 on float32 master parameters.
  """

  def loss_of_params(params, x0, labels, key):
    model = nnx.merge(graphdef, precision.cast_floating(params, compute_dtype))
    return diffusion_loss(model, schedule, x0, labels, key, p_uncond=p_uncond, null_id=null_id,
                          compute_dtype=compute_dtype)

  def step_fn(params, opt_state, ema, x0, labels, key, step):
    loss, grads = jax.value_and_grad(loss_of_params)(params, x0, labels, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # EMA with the usual warm-up so short runs are not dominated by the random init.
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    return params, opt_state, ema, dict(loss=loss, grad_norm=optax.tree.norm(grads))

  out = None if mesh is None else sharding.replicated(mesh)
  return jax.jit(step_fn, donate_argnums=(0, 1, 2), out_shardings=out)


def step_function(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                  tx: optax.GradientTransformation, mesh: Mesh | None = None) -> Callable:
  """`make_train_step` with the schedule, dropout, EMA and precision settings of `config`."""
  return make_train_step(graphdef, tx, make_schedule(config.diffusion.schedule, config.diffusion.T),
                         p_uncond=config.train.p_uncond, null_id=null_condition(config),
                         ema_decay=config.train.ema_decay, compute_dtype=precision.compute_dtype(config),
                         mesh=mesh)


def _is_process_0() -> bool:
  """Whether this process writes the workdir's shared files (config.json, manifest.json, the
  tokenizer, metrics.jsonl, monitor.png): process 0 of a multi-process run, or the only process.
  Orbax coordinates the checkpoints' writes itself."""
  return jax.process_index() == 0


def _on_process_0(fn: Callable[[], None]) -> None:
  """Runs fn() on process 0 only; with several processes, all of them raise if it raised there.

  For the workdir's checked or rewritten files: process 0 alone checks and writes config.json, and
  a refused workdir (a different run's checkpoints) stops every process at once instead of leaving
  the others waiting for process 0 in the first collective. The others return only once process 0
  is done, so they read what it wrote.
  """
  if jax.process_count() == 1:
    fn()
    return
  error = None
  if _is_process_0():
    try:
      fn()
    except Exception as e:  # noqa: BLE001 (re-raised below, after the others have been told)
      error = e
  failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
  if error is not None:
    raise error
  if failed:
    raise ValueError(f"Process 0 refused the workdir or could not write to it (its log says why); "
                     f"process {jax.process_index()} stops too.")


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _drop_metrics_after(path: str, step: int) -> None:
  """Keeps the metrics.jsonl records up to `step` (a killed run logged steps it did not save, and
  may have been killed halfway through writing a line: such a line is dropped too)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]

  def keep(line: str) -> bool:
    try:
      return line.endswith("\n") and json.loads(line)["step"] <= step
    except (json.JSONDecodeError, KeyError):
      return False

  kept = [line for line in lines if keep(line)]
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def _last_record(path: str, step: int) -> dict | None:
  """The metrics.jsonl record of `step`, if logged (the last one, should there be several)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    found = [r for r in (json.loads(line) for line in f if line.strip()) if r["step"] == step]
  return found[-1] if found else None


def _make_monitor(config: ml_collections.ConfigDict, c: config_lib.Config, graphdef: nnx.GraphDef,
                  subset, conds, null) -> monitor_lib.Monitor | None:
  """The memorization monitor of config.monitor, or None when it is off (every = 0)."""
  if c.monitor.every == 0:
    return None
  classifier = None
  if c.monitor.class_accuracy:
    classifier = monitor_lib.load_classifier(config)
  return monitor_lib.Monitor(config, graphdef, subset, conds, null, classifier=classifier)


def _stop_message(step: int, values: dict, threshold: float, ckpt_dir: str) -> str:
  return (f"Early stop at step {step}: copy rate on unique (non-duplicated) training images "
          f"{values['copy_rate_unique']:.3f} > config.monitor.stop_copy_rate={threshold:g}. Final "
          f"checkpoint: step {step} in {ckpt_dir}. To train on, rerun with a higher "
          f"--config.monitor.stop_copy_rate (1 = never stop).")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) the run in `workdir` up to config.train.steps; returns the final state.

  Data-parallel over the mesh of config.parallel (every device by default); each host loads only
  its rows of each global batch. Everything is validated before anything is compiled. With
  config.monitor.every ≥ 1 the memorization monitor (minidiff/train/monitor.py) checks the EMA
  model every that many steps and at the last one, logs to metrics.jsonl ("monitor") and plots
  workdir/monitor.png; config.monitor.stop_copy_rate < 1 may end training early, with a checkpoint.
  In a multi-process run the processes may share one workdir: process 0 alone writes its files
  (config.json, manifest.json, the tokenizer, metrics.jsonl, monitor.png); Orbax coordinates the
  checkpoints.
  """
  c = config_lib.validate_config(config)
  sharding.initialize_distributed(config)
  t = config.train
  mesh = sharding.mesh_from_config(config)
  sharding.check_divisible(t.batch_size, mesh, "config.train.batch_size")
  precision.compute_dtype(config)
  writer = _is_process_0()
  _on_process_0(lambda: config_lib.check_or_write_workdir_config(config, workdir))
  subset = load_training_data(config)
  if writer:
    subset.manifest.save(os.path.join(workdir, "manifest.json"))
  train = subset.train
  conds, null = training_conditions(config, subset, workdir if writer else None)
  log.info("Training set: %d examples (%d unique, %d duplicated ×%d).", len(train),
           len(subset.unique_images), int(subset.manifest.is_duplicated.sum()), config.data.dup_factor)

  graphdef, state, tx = init_state(config)
  log.info("UNet: %d parameters; data-parallel over %d %s device(s), %d host(s).",
           count_params(nnx.merge(graphdef, state.params)), mesh.size, mesh.devices.flat[0].platform,
           jax.process_count())
  state = dataclasses.replace(state, **{k: sharding.replicate(getattr(state, k), mesh)
                                        for k in ("params", "ema_params", "opt_state")})
  ckpt = Checkpointer(workdir, max_to_keep=t.max_to_keep)
  if ckpt.latest_step() is not None:
    state = restore_state(ckpt, state)  # restored with the template's (replicated) sharding
    log.info("Resumed from checkpoint at step %d in %s.", state.step, ckpt.directory)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  # They are trained again. Process 0 rewrites the file; the others read it only after that.
  _on_process_0(lambda: _drop_metrics_after(metrics_path, state.step))
  if state.step >= t.steps:
    log.info("Already trained to step %d ≥ train.steps=%d; nothing to do.", state.step, t.steps)
    ckpt.close()
    return state
  mon = _make_monitor(config, c, graphdef, subset, conds, null)
  stop_at = c.monitor.stop_copy_rate
  last = _last_record(metrics_path, state.step) if mon is not None and state.step else None
  if last is not None and "monitor" in last and monitor_lib.should_stop(last["monitor"], stop_at):
    log.info("Already stopped early: %s", _stop_message(state.step, last["monitor"], stop_at,
                                                         ckpt.directory))
    ckpt.close()
    return state

  step_fn = step_function(config, graphdef, tx, mesh)
  rows = sharding.local_rows(mesh, t.batch_size)
  base_key = jax.random.key(config.seed)
  params, opt_state, ema = state.params, state.opt_state, state.ema_params
  last_good = ckpt.latest_step()

  def batch(step: int):
    idx = batch_indices(len(train), t.batch_size, step, config.seed)[rows]  # this host's rows
    x0, labels = sharding.global_batch(mesh, train.images[idx], conds[idx])
    return x0, labels, sharding.replicate(jax.random.fold_in(base_key, step), mesh)

  # Compiled before the progress bar starts, so its rate and ETA are those of training steps.
  log.info("Compiling the training step%s (once; tens of seconds on a CPU)…",
           " and the monitor's sampler" if mon is not None else "")
  t0 = time.perf_counter()
  step_fn = step_fn.lower(params, opt_state, ema, *batch(state.step), state.step).compile()
  compile_s = time.perf_counter() - t0
  sampler_s = f" and the monitor's sampler in {mon.compile(ema):.1f} s" if mon is not None else ""
  log.info("Compiled the training step in %.1f s%s; training steps %d → %d.", compile_s, sampler_s,
           state.step, t.steps)

  window, t_window = [], time.perf_counter()
  pending = None  # (step, metrics) of the step in flight: checked after the next one is dispatched

  def check(step: int, metrics: dict) -> float:
    # The gradient too: a NaN/Inf gradient with a finite loss makes the parameters NaN, and at a
    # checkpoint step they would be saved and reported as the last good checkpoint.
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      where = f"step {last_good} in {ckpt.directory}" if last_good is not None else "none yet"
      raise FloatingPointError(
          f"Training loss became {loss} at step {step} (gradient norm {grad_norm}). Last good "
          f"checkpoint: {where} (kept). Lower config.train.lr or raise warmup_steps, then rerun "
          f"to resume from it.")
    return loss

  bar = tqdm(range(state.step, t.steps), initial=state.step, total=t.steps, desc="train",
             unit="step", dynamic_ncols=True, mininterval=1.0)
  postfix, stopped, final = {}, None, t.steps
  for step in bar:
    x0, labels, key = batch(step)
    params, opt_state, ema, metrics = step_fn(params, opt_state, ema, x0, labels, key, step)
    if pending is not None:
      window.append(check(*pending))
    pending = (step, metrics)
    done = step + 1
    monitor_due = mon is not None and (done % c.monitor.every == 0 or done == t.steps)
    if done % t.log_every == 0 or done == t.steps or done % t.checkpoint_every == 0 or monitor_due:
      window.append(check(*pending))
      pending = None
      elapsed = time.perf_counter() - t_window
      ips = len(window) * t.batch_size / elapsed
      record = dict(step=done, loss=float(np.mean(window)), grad_norm=float(metrics["grad_norm"]),
                    images_per_s=ips, time=time.time())
      postfix.update(loss=f"{record['loss']:.4f}", img_s=f"{ips:.0f}")
      if monitor_due:
        t_mon = time.perf_counter()
        record["monitor"] = mon(ema)
        record["monitor_seconds"] = time.perf_counter() - t_mon
        postfix["copy"] = f"{record['monitor']['copy_rate']:.2f}"
        if monitor_lib.should_stop(record["monitor"], stop_at):
          stopped = record["monitor"]
      if writer:
        _append_jsonl(metrics_path, record)
      bar.set_postfix(postfix)
      window, t_window = [], time.perf_counter()
    if done % t.checkpoint_every == 0 or done == t.steps or stopped is not None:
      ckpt.save(done, TrainState(done, params, ema, opt_state).as_dict())
      last_good = done
      t_window = time.perf_counter()  # keep checkpoint time out of images/s
    if stopped is not None:
      final = done
      break
  bar.close()
  ckpt.close()
  if mon is not None and writer:
    png = monitor_lib.plot_curve(metrics_path, os.path.join(workdir, monitor_lib.PLOT_NAME),
                                 title=mon.description)
    if png:
      log.info("Monitor: copy rate against step in %s.", png)
  if stopped is not None:
    log.info(_stop_message(final, stopped, stop_at, ckpt.directory))
  log.info("Done: trained to step %d; checkpoint in %s. Next: python sample.py --workdir %s",
           final, ckpt.directory, workdir)
  return TrainState(final, params, ema, opt_state)
