"""The public API on the tiny run: load / sample equal the study's samples at an earlier checkpoint
(--step), the .npz keeps per-sample flags, a weight function equals the built-in strategy it writes
out, any ε-function goes into the jitted sampler (closed form), and each example script runs."""
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


def test_run_sample_equals_the_study_at_an_earlier_checkpoint(tiny_run, tmp_path, monkeypatch):
  monkeypatch.setattr(engine, "_classifier", lambda config, options: None)  # copies need none
  run = minidiff.load(tiny_run, step=3)  # the tiny run saves at steps 3 and 6
  assert run.step == 3 and minidiff.load(tiny_run).step == 6
  out = run.sample("cfg:w=3", classes=[3, 7], num=6, seed=0, batch=8)
  assert out.samples.shape == (6, 8, 8, 1) and out.labels.tolist() == [3, 7, 3, 7, 3, 7]
  assert np.all(out.w == 3.0)
  opts = StudyOptions(sampling=sampling.SamplingOptions(num=6, num_steps=5, batch=8, classes=(3, 7),
                                                        step=3),
                      fd_resamples=10, figures=False)
  results = engine.run_study([tiny_run], "cfg:w=3", options=opts, outdir=str(tmp_path / "s"))
  assert results["seeds"][0]["checkpoint_step"] == 3 and results["options"]["sampling"]["step"] == 3
  with np.load(tmp_path / "s" / "seed_0" / "cfg_w3.npz") as f:
    np.testing.assert_array_equal(f["samples"], out.samples)  # the same noises, keys and model
    assert f["flag_copy"].dtype == bool and f["flag_copy"].shape == (6,)
    assert f["nn_index"].dtype == np.int32
    assert "".join("1" if v else "0" for v in f["flag_copy"]) == \
        results["seeds"][0]["arms"]["cfg:w=3"]["flags"]["copy"]
  # Your own ε-function in the same jitted sampler: here the model itself, through a closure.
  mine = run.sample("cfg:w=3", classes=[3, 7], num=6, seed=0, batch=8,
                    eps_fn=lambda x_t, t, c: run.eps_fn(x_t, t, c))
  np.testing.assert_allclose(mine.samples, out.samples, atol=1e-5)
  with pytest.raises(ValueError, match=r"--step=4: .* steps 3, 6 only"):
    minidiff.load(tiny_run, step=4)
  with pytest.raises(ValueError, match="one strategy"):
    run.sample("cfg:w=1,3", num=2)


def _toy_eps(x_t, t, c):
  """A cheap, condition-dependent ε (no network): enough to tell the guidance weights apart."""
  return 0.3 * x_t + 0.05 * c.astype(x_t.dtype)[:, None, None, None] + 1e-3 * t[:, None, None, None]


def test_weight_function_equals_the_builtin_strategy():
  x_T = jax.random.normal(jax.random.key(0), (4, 4, 4, 1))  # noqa: N806
  cond, null, key = jnp.arange(4, dtype=jnp.int32), jnp.full(4, 10, jnp.int32), jax.random.key(1)
  kw = dict(schedule="linear", T=100, num_steps=8)
  delayed = minidiff.weight_schedule(lambda k, t, s: jnp.where(t > 50, 0.0, 3.0), name="delayed")
  x_fn, d_fn = minidiff.jitted_sampler(_toy_eps, strategy=delayed, **kw)(x_T, cond, null, key)
  x_st, d_st = minidiff.jitted_sampler(_toy_eps, strategy="static:tau=50:w_post=3", **kw)(
      x_T, cond, null, key)
  np.testing.assert_allclose(np.asarray(x_fn), np.asarray(x_st), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(d_fn.w), np.asarray(d_st.w))
  # A plain function sees this step's signals, one value per sample: w = 2 where d_t is the largest.
  pick = lambda k, t, s: jnp.where(s.d_eps == s.d_eps.max(), 2.0, 1.0)  # noqa: E731
  _, diag = minidiff.jitted_sampler(_toy_eps, strategy=pick, **kw)(x_T, cond, null, key)
  w, d = np.asarray(diag.w), np.asarray(diag.d_eps)
  np.testing.assert_array_equal(w == 2.0, d == d.max(axis=1, keepdims=True))
  with pytest.raises(ValueError, match="returned w of shape"):
    minidiff.jitted_sampler(_toy_eps, strategy=lambda k, t, s: jnp.ones((2, 2)), **kw)(
        x_T, cond, null, key)


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


@pytest.mark.parametrize("script,args,expected", [
    ("sample_a_run.py", ["--guidance", "opposite:tau=60:s=2", "--classes", "0,7", "--num", "4"],
     "samples (4, 8, 8, 1)"),
    ("weight_function.py", ["--num", "4", "--tau", "50"], "max |Δ| = "),
    ("own_eps_fn.py", [], "analytic ε = 0"),
])
def test_examples_run(tiny_run, tmp_path, monkeypatch, capsys, script, args, expected):
  monkeypatch.chdir(tmp_path)
  workdir = ["--workdir", tiny_run] if script != "own_eps_fn.py" else []  # its model part: manual
  monkeypatch.setattr(sys, "argv", [script] + workdir + args)
  runpy.run_path(os.path.join(ROOT, "examples", script), run_name="__main__")
  out = capsys.readouterr().out
  assert expected in out, out
  if script == "sample_a_run.py":
    assert os.path.exists(tmp_path / "sample_a_run.png")
  if script == "weight_function.py":  # the function equals the built-in static transition
    assert float(out.split("max |Δ| = ")[1].split()[0]) < 1e-5
  if script == "own_eps_fn.py":  # the analytic denoiser matches its closed form
    assert float(out.split("max |x₀ − x_T/√ᾱ_t₀| = ")[1].split()[0]) < 1e-4
