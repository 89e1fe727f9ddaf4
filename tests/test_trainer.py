import dataclasses
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.core.schedule import linear_schedule
from minidiff.train import inputs, trainer
from minidiff.train import state as train_state
from minidiff.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.ema_params))]


def _assert_bitwise_equal(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_batch_indices_visit_every_example_once_per_epoch():
  idx = np.concatenate([trainer.batch_indices(10, 4, s, seed=0) for s in range(5)])  # 2 epochs
  assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
  np.testing.assert_array_equal(trainer.batch_indices(10, 4, 3, seed=0), idx[12:16])
  assert not np.array_equal(trainer.batch_indices(10, 4, 0, seed=1), idx[:4])


def test_loss_at_init_is_the_noise_variance():
  # The zero-initialised output layer predicts ε̂ = 0, so the loss is E‖ε‖²/d = 1.
  from configs import tiny
  model = train_state.build_model(tiny.get_config())
  x0 = jnp.zeros((256, 8, 8, 1))
  # One compiled program (eager op-by-op execution compiles every primitive separately: ~5× slower).
  loss = nnx.jit(lambda m, x, y, k: trainer.diffusion_loss(m, linear_schedule(100), x, y, k,
                                                           p_uncond=0.1, null_id=10))(
      model, x0, jnp.zeros(256, jnp.int32), jax.random.key(0))
  np.testing.assert_allclose(loss, 1.0, atol=0.02)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """12 uninterrupted steps of the tiny config (checkpoints at 3, 6, 9, 12)."""
  from configs import tiny
  c = tiny.get_config()
  c.train.steps = 12
  c.train.log_every = 1
  workdir = str(tmp_path_factory.mktemp("straight"))
  return c, workdir, trainer.train_and_evaluate(c, workdir)


def test_training_writes_metrics_config_manifest_and_loss_decreases(straight_run):
  c, workdir, _ = straight_run
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records] == list(range(1, 13))
  assert {"loss", "grad_norm", "images_per_s"} <= set(records[0])
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["steps"] == 12
  manifest = json.load(open(os.path.join(workdir, "manifest.json")))
  assert manifest["num_unique"] == 40 and manifest["num_examples"] == 40 + 2 * 2
  assert Checkpointer(workdir).all_steps() == [6, 9, 12]  # max_to_keep = 3


def test_loss_decreases_on_a_fixed_evaluation_batch(straight_run):
  c, _, final = straight_run
  subset = inputs.load_training_data(c)
  x0 = jnp.tile(jnp.asarray(subset.unique_images), (16, 1, 1, 1))  # 640 (image, t, ε) draws
  labels = jnp.tile(jnp.asarray(subset.manifest.label), 16)
  graphdef, init, _ = train_state.init_state(c)

  @jax.jit  # one compile for both evaluations
  def loss(params):
    return trainer.diffusion_loss(nnx.merge(graphdef, params), linear_schedule(c.diffusion.T),
                                  x0, labels, jax.random.key(123), p_uncond=0.0, null_id=10,
                                  train=False)

  before, after = float(loss(init.params)), float(loss(final.params))
  # Measured: 1.015 → 0.894 after 12 steps of batch 8.
  assert before > 0.95 and after < 0.92 * before, (before, after)


def test_resume_equals_uninterrupted_run(straight_run, tmp_path):
  c, _, reference = straight_run
  c = c.copy_and_resolve_references()
  c.train.steps = 5  # stop between checkpoints: resume must restart from step 3's checkpoint
  trainer.train_and_evaluate(c, str(tmp_path))
  c.train.steps = 12
  resumed = trainer.train_and_evaluate(c, str(tmp_path))
  assert resumed.step == 12
  _assert_bitwise_equal(resumed, reference)
  with open(tmp_path / "metrics.jsonl") as f:  # steps 4–5 were logged, then trained again: once each
    assert [json.loads(line)["step"] for line in f] == list(range(1, 13))


def test_sigkill_then_rerun_resumes_to_the_same_parameters(straight_run, tmp_path):
  c, _, reference = straight_run
  workdir = str(tmp_path)
  cmd = [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", workdir,
         "--config.train.steps=12", "--config.train.log_every=1"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(os.path.join(ckpt_dir, "3")):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-step or mid-save
  proc.wait()
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "Resumed from checkpoint" in done.stderr
  graphdef, template, _ = train_state.init_state(c)
  ckpt = Checkpointer(workdir)
  resumed = train_state.restore_state(ckpt, template)
  assert resumed.step == 12
  _assert_bitwise_equal(resumed, reference)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(straight_run, tmp_path,
                                                                           monkeypatch):
  c, _, _ = straight_run
  c = c.copy_and_resolve_references()
  c.train.steps = 3
  workdir = str(tmp_path)
  trainer.train_and_evaluate(c, workdir)  # a good checkpoint at step 3
  real = trainer.load_training_data

  def poisoned(config):
    subset = real(config)
    images = subset.train.images.copy()
    images[:] = np.nan
    return dataclasses.replace(subset, train=dataclasses.replace(subset.train, images=images))

  monkeypatch.setattr(trainer, "load_training_data", poisoned)
  c.train.steps = 6
  with pytest.raises(FloatingPointError, match=r"nan at step 3 \(gradient norm nan\)\. Last good checkpoint: step 3"):
    trainer.train_and_evaluate(c, workdir)
  assert Checkpointer(workdir).all_steps() == [3]


def test_refuses_a_workdir_trained_with_another_config(straight_run):
  c, workdir, _ = straight_run
  c = c.copy_and_resolve_references()
  c.train.lr = 0.5
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(ValueError, match="train.lr: saved 0.001 → given 0.5"):
    trainer.train_and_evaluate(c, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


# Trains the straight_run config and SIGKILLs itself while checkpoint argv[2] is being written: after
# Orbax has written the arrays into `<step>.orbax-checkpoint-tmp…/`, before it merges and renames.
KILL_DURING_SAVE = """
import os, signal, sys
from minidiff import runtime
runtime.configure_cpu()
import orbax.checkpoint as ocp
from configs import tiny
from minidiff.train import trainer

real_finalize = ocp.handlers.StandardCheckpointHandler.finalize

def finalize(self, directory):  # directory: <checkpoints>/<step>.orbax-checkpoint-tmp…/default
  if os.path.basename(os.path.dirname(str(directory))).split(".")[0] == sys.argv[2]:
    os.kill(os.getpid(), signal.SIGKILL)
  real_finalize(self, directory)

ocp.handlers.StandardCheckpointHandler.finalize = finalize
c = tiny.get_config()
c.train.steps, c.train.log_every = 12, 1
trainer.train_and_evaluate(c, sys.argv[1])
"""


def _damage(checkpoint_dir):
  """Truncates the checkpoint's array files to half their size (what a full disk leaves)."""
  for path in glob.glob(os.path.join(checkpoint_dir, "default", "d", "*")):
    os.truncate(path, os.path.getsize(path) // 2)


def test_sigkill_during_a_checkpoint_write_and_a_damaged_latest_then_rerun_resumes_bitwise(
    straight_run, tmp_path, caplog):
  # Two faults, one (costly) rerun: the run is killed while writing checkpoint 9, and the latest
  # complete one, 6, is then found damaged. The rerun (to step 6, to keep it short) must resume
  # from 3 and end bitwise equal to the uninterrupted run at step 6: params, EMA and optimizer.
  c, straight_workdir, _ = straight_run
  workdir = str(tmp_path)
  killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, workdir, "9"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  ckpt = Checkpointer(workdir)
  assert ckpt.all_steps() == [3, 6]
  [partial] = ckpt.partial_saves()
  assert os.path.basename(partial).startswith("9.") and glob.glob(f"{partial}/**/*", recursive=True)
  _damage(os.path.join(ckpt.directory, "6"))
  c = c.copy_and_resolve_references()
  c.train.steps = 6
  with caplog.at_level(logging.INFO, logger="minidiff"):
    resumed = trainer.train_and_evaluate(c, workdir)  # the rerun, in this process
  assert "Checkpoint 9 is incomplete" in caplog.text and "Removing" in caplog.text
  assert "Checkpoint 6" in caplog.text and "cannot be restored" in caplog.text
  assert "Resumed from checkpoint at step 3" in caplog.text
  assert os.listdir(os.path.join(workdir, "checkpoints_unreadable")) == ["6"]
  assert ckpt.all_steps() == [3, 6] and ckpt.partial_saves() == []
  _, template, _ = train_state.init_state(c)
  reference = train_state.restore_state(Checkpointer(straight_workdir), template, step=6)
  _assert_bitwise_equal(resumed, reference)
  for x, y in zip(*(jax.tree.leaves(s.opt_state) for s in (resumed, reference)), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(straight_run, tmp_path):
  c, straight_workdir, _ = straight_run
  workdir = str(tmp_path / "w")
  shutil.copytree(straight_workdir, workdir)
  for step in (6, 9, 12):
    _damage(os.path.join(workdir, "checkpoints", str(step)))
  with pytest.raises(ValueError, match="can be restored into the model.*does not start over"):
    trainer.train_and_evaluate(c, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6", "9"]
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))
