import json
import math
import os
import re

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance
from minidiff.core import registry
from minidiff.core import specs as specs_lib
from minidiff.study import sampling
from minidiff.study.engine import sample_and_study

# The strategies of minidiff.core.guidance (the w-choosing rules), in registry order.
GUIDANCE_NAMES = tuple(n for n in registry.RULE_NAMES
                       if registry.RULES[n].__module__ == guidance.__name__)


def test_parse_guidance_specs_and_overrides():
  specs = specs_lib.parse_guidance("cfg:w=3, static:tau=600 ,opposite", T=1000, overrides={"w_post": "5"})
  assert [s.label for s in specs] == ["cfg:w=3", "static:tau=600", "opposite"]
  assert specs[0].strategy.w == 3.0
  assert specs[1].strategy.tau == 600 and specs[1].strategy.w_post == 5.0
  assert specs[2].strategy.w_pre == -2.0 and specs[2].strategy.w_post == 5.0
  assert specs[1].slug == "static_tau600"


@pytest.mark.parametrize("spec, overrides, match", [
    ("cfgg", None, "Unknown guidance strategy"),
    ("static:tau=1000", None, "tau"),
    ("static:tau=-1", None, "tau"),
    ("static:tau", None, "param=value"),
    ("cfg:tau=3", None, "no parameter"),
    ("cfg", {"tau": "5"}, "match no parameter"),
    ("cfg,cfg", None, "repeat"),
    ("", None, "No guidance"),
])
def test_bad_guidance_specs(spec, overrides, match):
  with pytest.raises(ValueError, match=match):
    specs_lib.parse_guidance(spec, T=1000, overrides=overrides)


@pytest.mark.parametrize("kw, match", [
    (dict(eta=1.5), "eta"), (dict(num_steps=0), "steps"), (dict(num_steps=1001), "steps"),
    (dict(sampler="euler"), "sampler"), (dict(spacing="log"), "spacing"), (dict(classes=(10,)), "classes"),
    (dict(num=0), "num"), (dict(batch=0), "batch"), (dict(x0_steps=(0, 50)), r"x0_steps contains \[50\]"),
    (dict(x0_steps=(-51,)), "x0_steps"),
])
def test_bad_sampling_options(kw, match):
  with pytest.raises(ValueError, match=match):
    sampling.SamplingOptions(**kw).validate(1000, 10)


def test_shared_inputs_are_deterministic_and_cycle_classes():
  o = sampling.SamplingOptions(num=5, classes=(3, 7), seed=1)
  x1, y1, _ = sampling.shared_inputs(o, shape=(4, 4, 1), num_classes=10)
  x2, y2, _ = sampling.shared_inputs(o, shape=(4, 4, 1), num_classes=10)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, [3, 7, 3, 7, 3])
  x3, _, _ = sampling.shared_inputs(sampling.SamplingOptions(num=5, seed=2), shape=(4, 4, 1), num_classes=10)
  assert not np.allclose(x1, x3)


def test_no_checkpoint_is_a_clear_error_before_compiling(tiny_config, tmp_path):
  from minidiff import config as config_lib
  config_lib.check_or_write_workdir_config(tiny_config, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    sample_and_study(str(tmp_path), "cfg", num=2)
  with pytest.raises(FileNotFoundError, match="Train first"):
    sample_and_study(str(tmp_path / "nothing"), "cfg", num=2)


def test_bad_sample_count_is_an_error_before_loading_the_model(tiny_config, tmp_path):
  from minidiff import config as config_lib
  config_lib.check_or_write_workdir_config(tiny_config, str(tmp_path))  # no checkpoint: not reached
  with pytest.raises(ValueError, match="--num=0 must be ≥ 1"):  # not silently the config's 12
    sample_and_study(str(tmp_path), "cfg", num=0)
  with pytest.raises(ValueError, match="--classes contains \\[-1\\]"):
    sample_and_study(str(tmp_path), "cfg", classes=(-1,))


def test_sampling_a_tiny_run_writes_outputs_and_is_deterministic(tiny_run, tmp_path):
  workdir = tiny_run  # shared by every worker: outputs go to tmp_path
  out = [str(tmp_path / f"s{i}") for i in range(2)]
  for o in out:
    sample_and_study(workdir, "cfg:w=2,dynamic", num=6, batch=4, outdir=o, x0_steps=(0, -1))
  for name in ("seed_0/cfg_w2.npz", "seed_0/cfg_w2_grid.png", "seed_0/dynamic.npz", "results.json",
               "report.md"):
    assert os.path.exists(os.path.join(out[0], name)), name
  a, b = (np.load(os.path.join(o, "seed_0", "dynamic.npz")) for o in out)
  np.testing.assert_array_equal(a["samples"], b["samples"])
  assert a["samples"].shape == (6, 8, 8, 1) and a["d_eps"].shape == (5, 6)
  np.testing.assert_array_equal(a["labels"], [0, 1, 0, 2, 3, 4])  # half on the memorized 0 and 1
  assert np.isfinite(a["d_eps"]).all()
  assert a["x0"].shape == (2, 6, 8, 8, 1)  # x̂₀ at the first and the last step
  np.testing.assert_allclose(a["x0"][1], a["samples"], atol=1e-5)  # the last x̂₀ is the sample
  results = json.load(open(os.path.join(out[0], "results.json")))
  assert [arm["label"] for arm in results["arms"]] == ["cfg:w=2", "dynamic"]


def test_partial_or_foreign_result_files_are_sampled_again(tmp_path, caplog):
  [spec] = specs_lib.parse_guidance("cfg", T=100)
  n = 4
  result = sampling.SampleResult(
      samples=np.zeros((n, 4, 4, 1), np.float32), labels=np.arange(n), t=np.array([50, 0]),
      d_eps=np.ones((2, n)), d_x0=np.ones((2, n)), w=np.ones((2, n)),
      transition_step=-np.ones(n, np.int32), x0=np.zeros((0,)), compile_s=1.0, sample_s=1.0)
  path = sampling.save_npz(result, str(tmp_path / f"{spec.slug}.npz"), meta="m1")
  assert sampling.load_result(path, "m1").samples.shape == (n, 4, 4, 1)
  assert sampling.load_result(path, "m2") is None  # made with other options or checkpoint
  os.truncate(path, os.path.getsize(path) // 2)  # a file cut short (written by another tool)
  with caplog.at_level("WARNING"):
    assert sampling.load_result(path, "m1") is None
  assert "Ignoring unreadable" in caplog.text


def test_checkpoint_that_does_not_match_the_config(tiny_run, tmp_path):
  import shutil
  workdir = str(tmp_path / "w")
  shutil.copytree(tiny_run, workdir)
  cfg = json.load(open(os.path.join(workdir, "config.json")))
  cfg["model"]["base_channels"] = 16
  json.dump(cfg, open(os.path.join(workdir, "config.json"), "w"))
  with pytest.raises(ValueError, match="can be restored into the model built from the config"):
    sample_and_study(workdir, "cfg", num=2)


def test_strategy_names_are_all_accepted():
  specs = specs_lib.parse_guidance(",".join(GUIDANCE_NAMES), T=1000)
  assert len(specs) == len(GUIDANCE_NAMES)


def test_nan_samples_are_named_with_their_strategy_indices_and_classes():
  from minidiff.core.schedule import linear_schedule

  def eps_apply(params, x_t, t, cond):  # finite, except for the class-3 condition: NaN
    return jnp.where((cond == 3)[:, None, None, None], jnp.nan, params * x_t)

  [spec] = specs_lib.parse_guidance("cfg:w=2", T=100)
  options = sampling.SamplingOptions(num=6, classes=(1, 3, 5), num_steps=2, batch=4)
  x_T, labels, key = sampling.shared_inputs(options, shape=(4, 4, 1), num_classes=10)  # noqa: N806
  with pytest.raises(FloatingPointError, match=r"Strategy 'cfg:w=2' produced NaN/Inf in 2 of 6 "
                     r"samples: indices \[1, 4\], classes \[3, 3\]\. Nothing was saved"):
    sampling.run_strategy(eps_apply, jnp.float32(0.1), linear_schedule(100), spec, options, x_T,
                          labels, key, null_id=10)


# Values of every strategy parameter that make_strategy accepts (interval draws its pair together).
_PARAM_VALUES = {
    "w": st.floats(-20, 20), "w_pre": st.floats(-20, 20), "w_post": st.floats(-20, 20),
    "w_min": st.floats(-20, 20), "w_max": st.floats(-20, 20), "s": st.floats(0.01, 20),
    "tau": st.integers(0, 999), "measure": st.sampled_from(guidance.MEASURES),
    "min_step": st.integers(2, 60), "peak_fraction": st.floats(0.01, 1.0), "smooth": st.integers(1, 8),
}


@hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
@hypothesis.given(data=st.data(), name=st.sampled_from(GUIDANCE_NAMES))
def test_property_guidance_specs_round_trip(data, name):
  params = {}
  for key in registry.rule_params(name):
    if key in _PARAM_VALUES and data.draw(st.booleans(), label=f"set {key}"):
      params[key] = data.draw(_PARAM_VALUES[key], label=key)
  if name == "interval":
    lo = data.draw(st.floats(0.0, 5.0), label="sigma_lo")
    params |= dict(sigma_lo=lo, sigma_hi=lo + data.draw(st.floats(0.01, 5.0), label="width"))
  text = {k: v if isinstance(v, str) else repr(v) for k, v in params.items()}  # repr: exact floats
  label = ":".join([name] + [f"{k}={v}" for k, v in text.items()])
  [spec] = specs_lib.parse_guidance(label, T=1000)
  assert spec.label == label and re.fullmatch(r"[A-Za-z0-9_.-]+", spec.slug)
  for key, value in params.items():
    if key == "s":
      assert spec.strategy.w_pre == -value
    else:
      assert getattr(spec.strategy, key) == value, (key, value)
  again = specs_lib.parse_guidance(label, T=1000, overrides={})  # parsing is a function of the text
  assert again[0].strategy == spec.strategy


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(text=st.text(alphabet="cfgstaiwnopedyml_:=,.-0123456789 ", max_size=30))
def test_property_any_spec_text_parses_or_is_a_value_error(text):
  try:
    specs = specs_lib.parse_guidance(text, T=1000)
  except ValueError:
    return
  for spec in specs:
    spec.strategy.validate(1000)
    assert all(math.isfinite(w) for w in spec.strategy.levels())
