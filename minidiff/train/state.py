"""Training state: what a checkpoint holds, fresh and restored states, and a workdir's EMA model.

Importable without the training loop (minidiff.train.trainer): sampling loads the EMA model of a
workdir from here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from minidiff import config as config_lib
from minidiff.nn.unet import UNet
from minidiff.train.checkpoint import Checkpointer, abstract_like


@dataclasses.dataclass
class TrainState:
  """Everything a checkpoint holds. `params`/`ema_params` are nnx.State pytrees of the UNet."""

  step: int
  params: Any
  ema_params: Any
  opt_state: Any

  def as_dict(self) -> dict[str, Any]:
    return dict(step=np.int64(self.step), params=self.params, ema_params=self.ema_params,
                opt_state=self.opt_state)


def init_params(config: ml_collections.ConfigDict, *, seed: int | None = None) -> tuple[nnx.GraphDef, Any]:
  """The UNet of `config` as (graphdef, params), initialised from `seed` (default config.seed).

  The weights are drawn on the host (see `minidiff.nn.layers.lecun_normal_host`), so this takes well under a second.
  """
  model = UNet(config_lib.unet_config(config), rngs=nnx.Rngs(config.seed if seed is None else seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  assert not jax.tree.leaves(rest), "the UNet has state besides its parameters"
  return graphdef, params


def build_model(config: ml_collections.ConfigDict, *, seed: int | None = None) -> UNet:
  """The UNet of `config`, initialised from `seed` (default config.seed)."""
  return nnx.merge(*init_params(config, seed=seed))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup to a constant learning rate and global-norm gradient clipping."""
  t = config.train
  lr = optax.linear_schedule(0.0, t.lr, max(t.warmup_steps, 1)) if t.warmup_steps else t.lr
  return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                     optax.adamw(lr, weight_decay=t.weight_decay))


def init_state(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, TrainState, optax.GradientTransformation]:
  """Fresh parameters, EMA copy and optimizer state."""
  graphdef, params = init_params(config)
  tx = make_optimizer(config)
  ema = jax.tree.map(jnp.copy, params)
  return graphdef, TrainState(0, params, ema, jax.jit(tx.init)(params)), tx


def restore_state(ckpt: Checkpointer, template: TrainState, step: int | None = None) -> TrainState:
  """The checkpoint (latest readable one by default) in the structure of `template`."""
  restored_step, d = ckpt.restore(abstract_like(template.as_dict()), step)
  return TrainState(int(d["step"]), d["params"], d["ema_params"], d["opt_state"])


def load_ema_model(workdir: str, config: ml_collections.ConfigDict | None = None, *,
                   step: int | None = None) -> tuple[UNet, int]:
  """The UNet with the EMA parameters of a checkpoint in `workdir` (the latest readable one, or
  `step`, one still on disk), and its step: the one model loader of the package.

  A checkpoint restores onto the default device whatever the device count it was saved with.
  Fails with a clear error, before anything is compiled, when there is no such checkpoint.
  """
  config = config or config_lib.load_workdir_config(workdir)
  ckpt = Checkpointer(workdir)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {ckpt.directory}: train first, e.g. python train.py "
                              f"--config configs/mnist_dup.py --workdir {workdir}")
    if step is not None and step not in steps:
      raise ValueError(f"--step={step}: {workdir} has checkpoints at steps "
                       f"{', '.join(map(str, steps))} only (train.max_to_keep keeps the last few); "
                       f"pick one of them.")
    graphdef, template, _ = init_state(config)
    state = restore_state(ckpt, template, step)  # step None: the latest readable one
  finally:
    ckpt.close()
  return nnx.merge(graphdef, state.ema_params), state.step
