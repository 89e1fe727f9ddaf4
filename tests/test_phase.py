"""The phase diagram: per-run configs, τ_mem and its linear fit, results from monitored runs."""
import json
import os

import numpy as np
import pytest

from minidiff import config as config_lib
from minidiff.study import phase


def test_linear_fit_recovers_a_line_and_scores_scatter():
  fit = phase.linear_fit([20, 40, 80], [300, 500, 900])  # τ = 100 + 10·n exactly
  assert fit["slope"] == pytest.approx(10.0) and fit["intercept"] == pytest.approx(100.0)
  assert fit["r2"] == pytest.approx(1.0) and fit["n_points"] == 3
  # y = [0, 2, 1] at x = [0, 1, 2]: slope 0.5, intercept 0.5, SS_res = 1.5, SS_tot = 2 → R² 0.25.
  fit = phase.linear_fit([0, 1, 2], [0, 2, 1])
  assert (fit["slope"], fit["intercept"], fit["r2"]) == pytest.approx((0.5, 0.5, 0.25))
  assert phase.linear_fit([20], [300]) is None


def test_run_config_trains_n_unique_images_with_the_monitor_on(tiny_config):
  s = phase.PhaseSettings(ns=(40,), steps=400, monitor_every=50, base_channels=8)
  for arm, (p_uncond, w, _) in phase.ARMS.items():
    c = config_lib.validate_config(phase.run_config(tiny_config, s, n=40, arm=arm))
    d = c.data
    assert (d.n_unique_per_class, d.num_duplicated_per_class, d.dup_factor) == (4, 0, 1)
    assert (c.monitor.every, c.monitor.w, c.train.p_uncond, c.train.steps) == (50, w, p_uncond, 400)
  with pytest.raises(ValueError, match="multiple of 10"):
    phase.PhaseSettings(ns=(25,)).validate()
  with pytest.raises(ValueError, match="arms="):
    phase.PhaseSettings(arms=("nope",)).validate()


def _fake_run(workdir, rates, every=100):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for i, r in enumerate(rates):
      f.write(json.dumps(dict(step=(i + 1) * every, loss=0.1, monitor=dict(
          copy_rate=r, copy_rate_duplicated=0.0, copy_rate_unique=r))) + "\n")


def test_results_give_tau_mem_and_its_fit_from_the_monitor_curves(tmp_path):
  s = phase.PhaseSettings(ns=(20, 40, 80), arms=("class",), steps=500, monitor_every=100)
  # Onset (> 10%) at steps 200, 300, 500: exactly τ = 100 + 5·n; n = 80 never passes 50%.
  _fake_run(tmp_path / "runs" / "class_n20", [0.0, 0.2, 0.6, 0.9, 0.8])
  _fake_run(tmp_path / "runs" / "class_n40", [0.0, 0.0, 0.3, 0.7, 0.9])
  _fake_run(tmp_path / "runs" / "class_n80", [0.0, 0.0, 0.0, 0.0, 0.2])
  out = str(tmp_path / "out")
  results = phase.write_results(s, workroot=str(tmp_path / "runs"), outdir=out)
  runs = results["arms"]["class"]["runs"]
  assert [runs[n]["tau_mem"]["0.1"] for n in ("20", "40", "80")] == [200, 300, 500]
  assert [runs[n]["tau_mem"]["0.5"] for n in ("20", "40", "80")] == [300, 400, None]
  assert (runs["20"]["final_copy_rate"], runs["20"]["best_copy_rate"], runs["20"]["best_step"]) == (
      0.8, 0.9, 400)
  fit = results["arms"]["class"]["tau_fit"]["0.1"]
  slope, intercept = np.polyfit([20, 40, 80], [200, 300, 500], 1)
  assert (fit["slope"], fit["intercept"]) == pytest.approx((slope, intercept))
  assert results["arms"]["class"]["tau_fit"]["0.5"]["censored_n"] == [80]
  assert json.load(open(os.path.join(out, "results.json"))) == json.loads(json.dumps(results))
  for name in ("memorization_vs_n.png", "tau_mem_vs_n.png", "curves.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0


def test_a_tiny_phase_diagram_trains_then_reuses_its_runs(tiny_config, tmp_path):
  # The tiny config's optimizer, EMA and monitor settings: the programs test_monitor.py compiled.
  s = phase.PhaseSettings(ns=(20,), arms=("class",), steps=4, monitor_every=2, num_samples=12,
                          num_steps=5, base_channels=8, batch_size=8, lr=1e-3, ema_decay=0.999,
                          warmup_steps=2)
  kw = dict(workroot=str(tmp_path / "runs"), outdir=str(tmp_path / "out"))
  first = phase.run_phase_diagram(tiny_config, s, **kw)
  run = first["arms"]["class"]["runs"]["20"]
  assert run["steps"] == [2, 4] and run["train_wall_s"] > 0
  again = phase.run_phase_diagram(tiny_config, s, **kw)  # finished: reused, same numbers
  assert again["arms"]["class"]["runs"]["20"]["copy_rate"] == run["copy_rate"]
