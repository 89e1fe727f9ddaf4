import glob
import json
import os

import numpy as np
import pytest

from minidiff.study import sampling
from minidiff.study import engine

RESULT_KEYS = {
    "n_samples", "memorization_rate", "memorization_rate_duplicated_conditions",
    "memorization_rate_other_conditions", "copy_rate_of_duplicated_images", "carlini_fraction_below",
    "similarity_p95", "similarity_fraction_above_0_5", "copies", "transition_fired",
    "transition_t_mean", "transition_t_std", "auc_mean_d_eps_copies", "auc_mean_d_x0_copies",
    "auc_mean_d_eps_duplicated_conditions", "auc_mean_d_x0_duplicated_conditions",
    "samples_per_s", "compile_s", "class_accuracy", "frechet_distance", "frechet_n_samples",
    "frechet_n_reference"}


def _result(samples, labels, d_eps, transition_step):
  s = d_eps.shape[0]
  return sampling.SampleResult(samples=samples, labels=labels, t=np.arange(s)[::-1] * 10,
                               d_eps=d_eps, d_x0=d_eps, w=np.ones_like(d_eps),
                               transition_step=transition_step, x0=np.zeros((0,)), compile_s=1.0,
                               sample_s=2.0)


def test_evaluate_strategy_on_constructed_samples():
  rng = np.random.default_rng(0)
  unique = rng.uniform(-1, 1, (6, 4, 4, 1)).astype(np.float32)
  is_dup = np.array([True, False, False, True, False, False])
  label_of = np.array([0, 0, 1, 1, 2, 2])
  # Samples: exact copies of images 0 (dup, class 0), 3 (dup, class 1), 4 (not dup, class 2),
  # then a 50/50 blend of 1 and 2 and pure noise (not copies).
  samples = np.stack([unique[0], unique[3], unique[4], 0.5 * (unique[1] + unique[2]),
                      rng.normal(size=(4, 4, 1)).astype(np.float32)])
  labels = np.array([0, 1, 2, 0, 2])
  d = np.array([[1.0, 1.0, 0.1, 0.1, 0.1], [2.0, 2.0, 0.1, 0.1, 0.1]])
  res = _result(samples, labels, d, np.array([1, -1, -1, 0, -1]))
  row, is_copy = engine.evaluate_strategy(res, unique_images=unique, is_duplicated=is_dup,
                                         duplicated_classes=np.unique(label_of[is_dup]), classifier=None)
  np.testing.assert_array_equal(is_copy, [True, True, True, False, False])
  assert row["memorization_rate"] == pytest.approx(3 / 5)
  # Conditions with a duplicated image: classes 0 and 1 → samples 0, 1, 3: two copies of three.
  assert row["memorization_rate_duplicated_conditions"] == pytest.approx(2 / 3)
  assert row["memorization_rate_other_conditions"] == pytest.approx(1 / 2)
  assert row["copy_rate_of_duplicated_images"] == pytest.approx(2 / 5)
  assert row["copies"]["copies_of_duplicated"] == 2 and row["copies"]["copies_of_non_duplicated"] == 1
  # Grid t = [10, 0]; transitions fired for sample 0 at step 1 (t = 0) and sample 3 at step 0 (t = 10).
  assert row["transition_fired"] == pytest.approx(2 / 5)
  assert row["transition_t_mean"] == pytest.approx(5.0)
  # Mean d: copies 1.5, 1.5, 0.1 vs non-copies 0.1, 0.1 → AUC = (2 + 2 + 2·0.5)/(3·2) = 5/6.
  assert row["auc_mean_d_eps_copies"] == pytest.approx(5 / 6)
  assert row["samples_per_s"] == pytest.approx(2.5)


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
  """One evaluation-classifier cache for this module: trained once, then loaded."""
  return str(tmp_path_factory.mktemp("classifier_cache"))


def test_tiny_end_to_end_study(tiny_run, tmp_path, classifier_cache):
  out = str(tmp_path / "study")
  results = engine.sample_and_study(tiny_run, outdir=out, classifier_cache=classifier_cache)
  on_disk = json.load(open(os.path.join(out, "results.json")))
  assert on_disk == json.loads(json.dumps(results))
  assert set(on_disk["strategies"]) == {"none", "cfg", "dynamic"}
  for name, row in on_disk["strategies"].items():
    assert RESULT_KEYS <= set(row), (name, RESULT_KEYS - set(row))
    assert 0.0 <= row["memorization_rate"] <= 1.0 and 0.0 <= row["class_accuracy"] <= 1.0
    assert row["frechet_n_samples"] == 12 and row["n_samples"] == 12
  assert on_disk["data"]["n_unique"] == 40 and on_disk["data"]["duplicated_classes"] == [0, 1]
  assert on_disk["strategies"]["none"]["transition_fired"] == 0.0
  report = open(os.path.join(out, "report.md")).read()
  assert "| `cfg` |" in report and "| `dynamic` |" in report
  for png in ("cfg_grid.png", "dynamic_dt.png", "dt_eps_memorized_vs_not.png", "dt_x0_memorized_vs_not.png"):
    assert os.path.exists(os.path.join(out, png)), png


def test_interrupted_study_reuses_finished_strategies_and_the_cached_classifier(
    tiny_run, tmp_path, monkeypatch, classifier_cache):
  from minidiff.metrics import classifier as classifier_lib
  out, cache = str(tmp_path / "study"), classifier_cache  # trained here or by the test above
  calls, crash = [], ["sampling"]

  def run_strategy(eps_apply, params, schedule, spec, options, x_T, labels, key,  # noqa: N803
                   *, null_id):
    """Stands in for the sampler (its cost is not what is tested): crashes on the 2nd strategy."""
    calls.append(spec.label)
    if crash[0] == "sampling" and len(calls) == 2:
      raise RuntimeError("simulated crash while sampling the second strategy")
    s = len(calls) + 1
    return _result(np.clip(x_T, -1, 1).astype(np.float32), labels, np.ones((s, len(labels))),
                   -np.ones(len(labels), np.int32))

  def figures(*args, **kw):
    raise RuntimeError("simulated crash after the evaluation")

  monkeypatch.setattr(sampling, "run_strategy", run_strategy)
  loaded = sampling.load_sampling_model(tiny_run)  # once: restoring the checkpoint takes seconds
  monkeypatch.setattr(sampling, "load_sampling_model", lambda workdir: loaded)
  with pytest.raises(RuntimeError, match="second strategy"):
    engine.sample_and_study(tiny_run, "none,cfg", outdir=out, classifier_cache=cache)
  assert calls == ["none", "cfg"]
  assert os.path.exists(os.path.join(out, "none.npz"))
  assert not os.path.exists(os.path.join(out, "cfg.npz"))

  calls.clear()
  crash[0] = "evaluation"
  with monkeypatch.context() as m:
    m.setattr(engine, "_figures", figures)
    with pytest.raises(RuntimeError, match="after the evaluation"):
      engine.sample_and_study(tiny_run, "none,cfg", outdir=out, classifier_cache=cache)
  assert calls == ["cfg"]  # "none" was reused, not sampled again
  assert not os.path.exists(os.path.join(out, "results.json"))
  assert len(glob.glob(os.path.join(cache, "classifier", "*", "meta.json"))) == 1  # cached

  calls.clear()
  monkeypatch.setattr(classifier_lib, "train_convnet",
                      lambda *a, **k: pytest.fail("the cached classifier was trained again"))
  results = engine.sample_and_study(tiny_run, "none,cfg", outdir=out, classifier_cache=cache)
  assert calls == []  # both strategies reused
  assert set(results["strategies"]) == {"none", "cfg"} and "heldout_accuracy" in results["classifier"]
  assert results["strategies"]["none"]["n_samples"] == 12
  assert os.path.exists(os.path.join(out, "results.json"))
