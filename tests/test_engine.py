"""The one study engine end to end on the tiny class and text runs, and its no-overwrite rule."""
import dataclasses
import json
import os

import numpy as np
import pytest

from minidiff.study import engine, report, sampling
from minidiff.study.engine import StudyOptions

ARMS = "none,cfg:w=1,3,static:tau=30:60:30,dynamic"


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("classifier_cache"))


def _options(classifier_cache, figures=False, **kw):
  return StudyOptions(sampling=sampling.SamplingOptions(num=8, num_steps=5, batch=8, **kw),
                      classifier_cache=classifier_cache, fd_resamples=20, figures=figures)


def test_class_study_over_two_seeds_writes_one_schema(tiny_run, tiny_run_seed1, tmp_path,
                                                      classifier_cache):
  out = str(tmp_path / "study")
  results = engine.run_study([tiny_run, tiny_run_seed1], ARMS,
                             options=_options(classifier_cache, figures=True),
                             outdir=out, command="test")
  assert results["version"] == engine.RESULTS_VERSION and results["kind"] == "class"
  labels = ["none", "cfg:w=1", "cfg:w=3", "static:tau=30", "static:tau=60", "dynamic"]
  assert [a["label"] for a in results["arms"]] == labels
  assert results["baseline"] == "cfg:w=3"  # the cfg arm of largest w
  assert [s["seed"] for s in results["seeds"]] == [0, 1]
  arm = results["summary"]["arms"]["static:tau=30"]
  assert arm["family"] == "static" and arm["copy_memorized"]["n"] == 8  # 4 memorized × 2 seeds
  assert 0 <= arm["copy_memorized"]["ci"][0] <= arm["copy_memorized"]["ci"][1] <= 1
  assert len(arm["alignment"]["per_seed"]) == 2
  assert {"diff", "ci", "p", "per_seed"} <= set(arm["vs_baseline"]["copy"])
  seed = results["seeds"][0]
  assert seed["conditions"]["groups"] == {"memorized": 4, "other": 4}
  assert seed["classifier"]["seed"] == engine.CLASSIFIER_SEED  # one evaluator for both seeds
  assert {"value", "ci", "n", "n_reference"} <= set(seed["arms"]["cfg:w=3"]["fd"])
  assert seed["fd_floor"]["n"] == 8
  assert seed["ema"]["effective_decay"] == pytest.approx(min(0.999, 7 / 16))  # step 6
  # The calibrated copy flag and the per-sample scores a reader re-thresholds without the .npz.
  cal = seed["copy_calibration"]["primary"]
  assert cal["score"] == "ncc_named_shift" and set(cal["thresholds"]) == {
      str(t) for t in seed["conditions"]["target_image"] if t >= 0}
  row = seed["arms"]["cfg:w=3"]
  scores = row["scores"]
  assert len(scores["nn1_distance"]) == len(scores["target_ncc_shift"]) == 8
  mem = [t >= 0 for t in seed["conditions"]["target_image"]]
  rethresholded = ["1" if m and s > cal["thresholds"][str(t)] else "0" for m, s, t in zip(
      mem, [v if v is not None else -2 for v in scores["target_ncc_shift"]],
      seed["conditions"]["target_image"])]
  assert "".join(rethresholded) == row["flags"]["copy"]
  assert seed["applies"]["copy"] == "".join("1" if m else "0" for m in mem)
  assert {"copy_vs_baseline", "alignment_vs_baseline", "copy_at_equal_alignment"} <= set(
      results["summary"]["questions"])
  for name in ("results.json", "report.md", "frontier.png", "seed_0/cfg_w3_grid.png",
               "seed_1/static_tau30.npz", "seed_1/results.json", "seed_1/report.md"):
    assert os.path.exists(os.path.join(out, name)), name
  text = open(os.path.join(out, "report.md")).read()
  assert text.index("## Frontier") < text.index("## Questions") < text.index("## Every arm")
  # The report is regenerated from results.json alone, identically.
  assert report.main(["report", os.path.join(out, "results.json")]) == 0
  assert open(os.path.join(out, "report.md")).read() == text
  one = json.load(open(os.path.join(out, "seed_1", "results.json")))
  assert [s["seed"] for s in one["seeds"]] == [1]
  assert one["summary"]["arms"]["none"]["copy_memorized"]["n"] == 4


def test_static_arms_from_the_shared_prefix_equal_the_arms_alone(tiny_run, tmp_path,
                                                                 classifier_cache):
  opts = _options(classifier_cache)
  engine.run_study([tiny_run], "static:tau=30,static:tau=60", options=opts,
                   outdir=str(tmp_path / "family"))
  for tau in (30, 60):
    engine.run_study([tiny_run], f"static:tau={tau}", options=opts,
                     outdir=str(tmp_path / f"alone{tau}"))
    with np.load(tmp_path / "family" / "seed_0" / f"static_tau{tau}.npz") as a, \
         np.load(tmp_path / f"alone{tau}" / "seed_0" / f"static_tau{tau}.npz") as b:
      np.testing.assert_allclose(a["samples"], b["samples"], atol=1e-5)
      np.testing.assert_array_equal(a["transition_step"], b["transition_step"])


def test_a_study_folder_is_resumed_never_overwritten(tiny_run, tmp_path, classifier_cache, caplog):
  out = str(tmp_path / "study")
  opts = _options(classifier_cache)
  engine.run_study([tiny_run], "none,cfg", options=opts, outdir=out)
  before = os.path.getmtime(os.path.join(out, "seed_0", "none.npz"))
  # The same study (a new baseline only changes the analysis): resumed in place, nothing resampled.
  engine.run_study([tiny_run], "none,cfg", options=dataclasses.replace(opts, baseline="none"),
                   outdir=out)
  assert not os.path.exists(out + "_2")
  assert os.path.getmtime(os.path.join(out, "seed_0", "none.npz")) == before
  assert json.load(open(os.path.join(out, "results.json")))["baseline"] == "none"
  first = json.load(open(os.path.join(out, "results.json")))
  engine.run_study([tiny_run], "none,cfg:w=3", options=opts, outdir=out)  # another: a new folder
  assert json.load(open(os.path.join(out, "results.json"))) == first
  assert os.path.exists(out + "_2/results.json")
  assert "holds another study" in caplog.text


def test_text_study_runs_through_the_same_engine(tiny_text_run, tmp_path, classifier_cache):
  results = engine.run_study([tiny_text_run], "none,cfg,cfg+random_tokens:k=2",
                             options=_options(classifier_cache), outdir=str(tmp_path / "text"))
  assert results["kind"] == "text" and results["version"] == engine.RESULTS_VERSION
  assert [a["family"] for a in results["arms"]] == ["cfg", "cfg", "random_tokens"]
  seed = results["seeds"][0]
  assert seed["conditions"]["groups"]["memorized"] == 4
  assert set(seed["arms"]["cfg"]["groups"]) >= {"all", "memorized", "other"}
  assert results["summary"]["arms"]["cfg+random_tokens:k=2"]["vs_baseline"]["copy"]["n"] == 4


@pytest.mark.parametrize("arms,match", [
    ("cfg+random_tokens:k=2", "class-conditional"),
    ("static:tau=30:2000:10", "tau"),
])
def test_bad_arms_fail_before_sampling(tiny_run, tmp_path, arms, match, classifier_cache):
  with pytest.raises(ValueError, match=match):
    engine.run_study([tiny_run], arms, options=_options(classifier_cache), outdir=str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")
