"""The public API on the tiny run: load / sample equal the study's samples, --step picks an earlier
checkpoint, a weight function equals the built-in strategy it writes out, any ε-function goes into
the jitted sampler (closed form), the .npz keeps per-sample flags, and each example script runs."""
import os
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minidiff
from minidiff.core import samplers
from minidiff.core.schedule import make_schedule
from minidiff.study import engine, sampling
from minidiff.study.engine import StudyOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tiny_run):
  return minidiff.load(tiny_run)


def test_run_sample_equals_the_study_and_the_npz_keeps_flags(run, tiny_run, tmp_path):
  out = run.sample("cfg:w=3", classes=[3, 7], num=6, seed=0, batch=8)
  assert out.samples.shape == (6, 8, 8, 1) and out.labels.tolist() == [3, 7, 3, 7, 3, 7]
  assert np.all(out.w == 3.0) and run.step == 6
  opts = StudyOptions(sampling=sampling.SamplingOptions(num=6, num_steps=5, batch=8, classes=(3, 7)),
                      classifier_cache=str(tmp_path / "clf"), fd_resamples=10, figures=False)
  engine.run_study([tiny_run], "cfg:w=3", options=opts, outdir=str(tmp_path / "s"))
  with np.load(tmp_path / "s" / "seed_0" / "cfg_w3.npz") as f:
    np.testing.assert_array_equal(f["samples"], out.samples)  # the same noises, keys and model
    assert f["flag_copy"].dtype == bool and f["flag_copy"].shape == (6,)
    assert f["nn_index"].shape == (6,) and f["nn_index"].dtype == np.int32


def test_step_samples_an_earlier_checkpoint(run, tiny_run, tmp_path):
  early = minidiff.load(tiny_run, step=3)  # the tiny run saves at steps 3 and 6
  assert early.step == 3
  a = early.sample("cfg", classes=[0], num=2, batch=8).samples
  assert not np.array_equal(a, run.sample("cfg", classes=[0], num=2, batch=8).samples)
  with pytest.raises(ValueError, match=r"--step=4: .* steps 3, 6 only"):
    minidiff.load(tiny_run, step=4)
  opts = StudyOptions(sampling=sampling.SamplingOptions(num=2, num_steps=5, batch=8, step=3),
                      classifier_cache=str(tmp_path / "clf"), fd_resamples=10, figures=False)
  results = engine.run_study([tiny_run], "cfg", options=opts, outdir=str(tmp_path / "s"))
  assert results["seeds"][0]["checkpoint_step"] == 3
  assert results["options"]["sampling"]["step"] == 3


def test_weight_function_equals_the_builtin_strategy(run):
  fn = minidiff.weight_schedule(lambda k, t, s: jnp.where(t > 50, 0.0, 3.0), name="delayed")
  mine = run.sample(fn, classes=[0, 1], num=4, batch=8)
  builtin = run.sample("static:tau=50:w_post=3", classes=[0, 1], num=4, batch=8)
  np.testing.assert_allclose(mine.samples, builtin.samples, atol=1e-6)
  np.testing.assert_array_equal(mine.w, builtin.w)
  # A plain function works too; it sees this step's d_t per sample.
  seen = run.sample(lambda k, t, s: 1.0 + 0.0 * s.d_eps, classes=[0], num=2, batch=8)
  assert np.all(seen.w == 1.0) and np.isfinite(seen.d_eps).all()
  with pytest.raises(ValueError, match="one strategy"):
    run.sample("cfg:w=1,3", num=2)


def test_any_eps_fn_into_the_jitted_sampler_closed_form():
  # ε ≡ 0 under DDIM (η = 0, no clipping): every step multiplies x by √ᾱ_prev/√ᾱ_t, so the product
  # telescopes to x₀ = x_T/√ᾱ_{t₀} (ᾱ_{−1} = 1), whatever the guidance weight.
  schedule = make_schedule("linear", 100)
  sample = minidiff.jitted_sampler(lambda x, t, c: jnp.zeros_like(x), schedule=schedule,
                                   strategy="cfg:w=5", num_steps=4, clip_x0=False)
  x_T = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))  # noqa: N806
  x0, diag = sample(x_T, jnp.zeros(3, jnp.int32), jnp.full(3, 10, jnp.int32), jax.random.key(1))
  t0 = int(samplers.time_grid(100, 4)[0])
  np.testing.assert_allclose(np.asarray(x0), np.asarray(x_T) / np.sqrt(float(schedule.alpha_bar[t0])),
                             rtol=1e-5)
  assert np.all(np.asarray(diag.w) == 5.0)


def test_eps_fn_wrapping_the_model(run):
  same = run.sample("cfg", classes=[2], num=2, batch=8, eps_fn=run.eps_fn)
  np.testing.assert_allclose(same.samples, run.sample("cfg", classes=[2], num=2, batch=8).samples,
                             atol=1e-5)


@pytest.mark.parametrize("script,args", [
    ("sample_a_run.py", ["--guidance", "opposite:tau=60:s=2", "--classes", "0,7", "--num", "4"]),
    ("weight_function.py", ["--num", "4", "--tau", "50"]),
    ("own_eps_fn.py", ["--num", "2"]),
])
def test_examples_run(tiny_run, tmp_path, monkeypatch, capsys, script, args):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "argv", [script, "--workdir", tiny_run] + args)
  runpy.run_path(os.path.join(ROOT, "examples", script), run_name="__main__")
  out = capsys.readouterr().out
  expected = {"sample_a_run.py": "samples (4, 8, 8, 1)", "weight_function.py": "max |Δ| = ",
              "own_eps_fn.py": "model ε × 0.9"}[script]
  assert expected in out, out
  if script == "sample_a_run.py":
    assert os.path.exists(tmp_path / "sample_a_run.png")
  if script == "weight_function.py":  # the function equals the built-in static transition
    assert float(out.split("max |Δ| = ")[1].split()[0]) < 1e-5
  if script == "own_eps_fn.py":  # the analytic denoiser matches its closed form
    assert float(out.split("max |x₀ − x_T/√ᾱ_t₀| = ")[1].split()[0]) < 1e-4
