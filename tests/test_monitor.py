"""The memorization monitor: the study's numbers on the same samples, the early stop, exact resume."""
import json
import logging
import os

import numpy as np
import pytest

from minidiff import config as config_lib
from minidiff.core import specs
from minidiff.study import evaluation, sampling
from minidiff.train import inputs, monitor, trainer
from minidiff.train.checkpoint import Checkpointer
from minidiff.train.state import init_state


def _monitored(config, *, every=3, num_samples=12, num_steps=5, **kw):
  c = config.copy_and_resolve_references()
  c.monitor = dict(every=every, num_samples=num_samples, num_steps=num_steps, w=1.0,
                   stop_copy_rate=1.0, class_accuracy=False)
  c.monitor.update(kw)
  return c


def _monitor_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["monitor"]) for r in map(json.loads, f) if "monitor" in r]


def test_monitor_is_off_by_default_and_old_configs_load(tiny_config):
  c = config_lib.sections(tiny_config)  # configs/tiny.py has no monitor section
  assert c.monitor.every == 0 and c.monitor.stop_copy_rate == 1.0
  assert all(k in config_lib.ADDED_FIELD_DEFAULTS for k in config_lib.OPTIONAL_FIELDS
             if k.startswith("monitor."))
  bad = _monitored(tiny_config, num_steps=101)
  with pytest.raises(ValueError, match=r"config.monitor.num_steps=101 must lie in \[1, T=100\]"):
    config_lib.validate_config(bad)


def test_monitor_copy_rate_equals_the_study_metric_on_the_same_samples(tiny_run):
  config, eps_apply, params, schedule, null_id, _ = sampling.load_sampling_model(tiny_run)
  config = _monitored(config)
  subset = inputs.load_training_data(config)
  conds, null = inputs.training_conditions(config, subset)
  graphdef, _, _ = init_state(config)
  mon = monitor.Monitor(config, graphdef, subset, conds, null)
  i = mon.inputs
  assert i.x_T.shape == (12, 8, 8, 1) and i.cond.tolist() == [k % 10 for k in range(12)]
  ours = mon.sample(params)
  # The study's sampler on the same noises, classes and key: w = 1 is its "conditional" arm.
  (spec,) = specs.parse_guidance("conditional", T=config.diffusion.T)
  options = sampling.options_from_config(config, num=12, num_steps=5)
  study = sampling.run_strategy(eps_apply, params, schedule, spec, options, i.x_T, i.cond, i.key,
                                null_id=null_id)
  np.testing.assert_allclose(ours, study.samples, atol=1e-5)
  # Plant copies: sample 0 ≈ the duplicated image of class 0, samples 1–2 ≈ two unique images.
  dup = np.flatnonzero(subset.manifest.is_duplicated)[0]
  uniq = np.flatnonzero(~subset.manifest.is_duplicated)[:2]
  planted = study.samples.copy()
  planted[:3] = subset.unique_images[[dup, *uniq]] + 1e-3
  ctx = evaluation.Context(conditions=None, unique_images=subset.unique_images,
                           is_duplicated=subset.manifest.is_duplicated, classifier=None,
                           fd_reference=None)
  for samples in (study.samples, planted):
    measured = evaluation.measure(ctx, samples)
    got = mon.measure(samples)
    assert got["copy_rate"] == evaluation.METRICS["copy_ratio"].fn(ctx, measured).mean()
    assert got["copy_rate_duplicated"] == evaluation.METRICS["copy_ratio_duplicated"].fn(ctx, measured).mean()
    assert got["copy_rate_unique"] == pytest.approx(got["copy_rate"] - got["copy_rate_duplicated"])
  got = mon.measure(planted)
  # The 6-step model copies nothing, so the planted three are all: 1/12 duplicated, 2/12 unique.
  assert mon.measure(study.samples)["copy_rate"] == 0.0
  assert (got["copy_rate"], got["copy_rate_duplicated"], got["copy_rate_unique"]) == (
      3 / 12, 1 / 12, pytest.approx(2 / 12))


def test_interrupted_monitored_run_logs_the_same_monitor_values(tiny_config, tmp_path, monkeypatch):
  c = _monitored(tiny_config, every=2)
  c.train.steps, c.train.log_every = 8, 1
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(c, straight)
  expected = _monitor_records(straight)
  assert [s for s, _ in expected] == [2, 4, 6, 8]
  assert os.path.exists(os.path.join(straight, monitor.PLOT_NAME))
  # Killed right after logging step 5: steps 4–5 (a monitored one among them) were logged but not
  # saved (checkpoints at 3, 6), so the rerun trains and monitors them again from step 3.
  real = trainer._append_jsonl

  def append_then_die(path, record):
    real(path, record)
    if record["step"] == 5:
      raise KeyboardInterrupt("killed")

  interrupted = str(tmp_path / "interrupted")
  monkeypatch.setattr(trainer, "_append_jsonl", append_then_die)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(c, interrupted)
  assert [s for s, _ in _monitor_records(interrupted)] == [2, 4]
  monkeypatch.setattr(trainer, "_append_jsonl", real)
  trainer.train_and_evaluate(c, interrupted)
  assert _monitor_records(interrupted) == expected  # exactly equal floats


def _overfit_config(tiny_config, *, stop_copy_rate, steps):
  # Ten training images, one per class, that a small one-level UNet learns to copy for real:
  # measured, its class-conditional DDIM samples first copy (ratio test) at step 250, with copy
  # rates 0.1, 0.2, 0.2, 0.3 at steps 250–400. T = 20 is what makes it fast: the same UNet at
  # T = 100 (cosine, batch 32, lr 3e-3) copied nothing in 400 steps (ratios ≥ 0.53), nor did the
  # tiny UNet on these images at 8×8 (400 steps) or 4×4 (lr 1e-2, 300 steps).
  c = _monitored(tiny_config, every=50, num_samples=10, num_steps=20, stop_copy_rate=stop_copy_rate)
  c.data.n_unique_per_class = 1
  c.data.num_duplicated_per_class = 0
  c.data.dup_factor = 1
  c.data.duplicated_classes = ()  # every image unique: every copy counts towards the stop
  c.diffusion.schedule, c.diffusion.T = "cosine", 20  # ᾱ(T − 1) ≈ 0: samples start at pure noise
  c.model.base_channels, c.model.channel_mults, c.model.attention_resolutions = 16, (1,), ()
  c.train.lr, c.train.batch_size = 5e-3, 64
  c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, 10_000, 10_000
  return c


def test_early_stop_fires_when_a_real_run_overfits_and_leaves_a_resumable_checkpoint(tiny_config,
                                                                                     tmp_path, caplog):
  threshold, limit = 0.05, 400  # the stop: the first check at which one of the ten samples copies
  c = _overfit_config(tiny_config, stop_copy_rate=threshold, steps=limit)
  workdir = str(tmp_path)
  with caplog.at_level(logging.INFO, logger="minidiff"):
    state = trainer.train_and_evaluate(c, workdir)
  records = _monitor_records(workdir)
  steps, unique = [s for s, _ in records], [m["copy_rate_unique"] for _, m in records]
  stop = state.step
  assert stop < limit, f"the run never copied: unique copy rates {unique} at steps {steps}"
  # It stopped at the first check above the threshold, and trained nothing after it.
  assert steps == list(range(50, stop + 1, 50))
  assert all(u <= threshold for u in unique[:-1]) and unique[-1] > threshold
  assert records[-1][1]["copy_rate"] == unique[-1]  # nothing duplicated: all copies are unique
  assert Checkpointer(workdir).latest_step() == stop
  message = (f"Early stop at step {stop}: copy rate on unique (non-duplicated) training images "
             f"{unique[-1]:.3f} > config.monitor.stop_copy_rate={threshold:g}")
  assert sum(message in r.getMessage() for r in caplog.records) == 1
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="minidiff"):  # the same command: stopped, nothing to do
    assert trainer.train_and_evaluate(c, workdir).step == stop
  assert any("Already stopped early" in r.getMessage() for r in caplog.records)
  assert _monitor_records(workdir) == records
  c.monitor.stop_copy_rate = 1.0  # never stop: trains on from the early stop's checkpoint
  c.train.steps = stop + 1
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="minidiff"):
    assert trainer.train_and_evaluate(c, workdir).step == stop + 1
  assert any(f"Resumed from checkpoint at step {stop}" in r.getMessage() for r in caplog.records)
  assert [s for s, _ in _monitor_records(workdir)] == [*steps, stop + 1]  # the last step is checked


def test_tau_mem_is_the_first_monitored_step_above_the_level():
  steps, rates = [100, 200, 300, 400], [0.0, 0.1, 0.4, 0.9]
  assert monitor.tau_mem(steps, rates, 0.1) == 300  # 0.1 does not exceed 0.1
  assert monitor.tau_mem(steps, rates, 0.5) == 400
  assert monitor.tau_mem(steps, rates, 0.95) is None
  assert monitor.should_stop({"copy_rate_unique": 0.2}, 0.1)
  assert not monitor.should_stop({"copy_rate_unique": 1.0}, 1.0)  # 1 never stops
