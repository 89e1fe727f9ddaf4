"""The metric registry: one registration reaches results.json, the summary and report.md; roles,
not names, pick the copy rate and the alignment; older results.json files are read through one
mapping; the detection block comes from the registered arm scores. No training: a hand-built
condition set, constant images and a stand-in classifier."""
import numpy as np
import pytest

from minidiff.metrics import stats
from minidiff.study import engine, evaluation, report, sampling, summary
from minidiff.study.conditions import ConditionSet

N = 8  # rows 0–3 name the duplicated image 0 (memorized), rows 4–7 name none
REQUESTED = np.array([0, 0, 0, 0, 1, 2, 3, 4])
MEMORIZED = np.arange(N) < 4


class _Classifier:
  """Predicts the requested class on rows 0–5 and class 9 on rows 6 and 7."""

  def predict(self, samples):
    return np.where(np.arange(len(samples)) < 6, REQUESTED, 9)

  def features(self, samples):
    return samples.reshape(len(samples), -1)


def _context() -> evaluation.Context:
  conditions = ConditionSet(kind="class", cond=REQUESTED.astype(np.int32), null=np.array([10]),
                            requested_class=REQUESTED, target_image=np.where(MEMORIZED, 0, -1),
                            groups={"memorized": MEMORIZED, "other": ~MEMORIZED})
  unique = np.random.default_rng(0).uniform(-1, 1, (6, 4, 4, 1)).astype(np.float32)
  return evaluation.Context(conditions, unique, np.arange(6) == 0, _Classifier(), None,
                            labels=np.arange(6))


def _result(positive_rows) -> sampling.SampleResult:
  """Constant images: +0.5 on `positive_rows`, −0.5 elsewhere; d_t higher on memorized rows."""
  samples = np.full((N, 4, 4, 1), -0.5, np.float32)
  samples[list(positive_rows)] = 0.5
  d = np.tile(np.where(MEMORIZED, 2.0, 1.0) + np.arange(N) * 0.01, (3, 1))
  return sampling.SampleResult(samples=samples, labels=REQUESTED, t=np.array([2, 1, 0]), d_eps=d,
                               d_x0=2 * d, w=np.ones((3, N)), transition_step=np.full(N, -1),
                               x0=samples, compile_s=0.0, sample_s=2.0)


def _mean_above_0(ctx, m):
  return m.samples.reshape(len(m.samples), -1).mean(axis=1) > 0


MEAN_ABOVE_0 = evaluation.Metric("mean_above_0", "the sample's mean pixel is above 0", _mean_above_0,
                                 column="mean > 0, memorized", group="memorized")


def _results(ctx, rows_by_arm) -> dict:
  """results.json as the engine writes it, from the real per-arm evaluation."""
  arms = {label: engine.evaluate_arm(ctx, ctx, _result(rows), seed=0, fd_resamples=10)
          for label, rows in rows_by_arm.items()}
  seed = dict(workdir="w", seed=0, checkpoint_step=10, ema=dict(decay=0.999, effective_decay=0.5),
              data=dict(n_train=7, n_unique=6, n_duplicated=1, dup_factor=2, memorized_classes=[0]),
              conditions=ctx.conditions.describe(), arms=arms, applies=evaluation.applies_masks(ctx))
  results = dict(version=2, kind="class", command="test", baseline="cfg:w=3",
                 options=dict(sampling=dict(sampler="ddim", num_steps=3, eta=0.0, spacing="uniform")),
                 arms=[dict(label="cfg:w=3", family="cfg"), dict(label="amg", family="amg")],
                 metrics={k: m.description for k, m in evaluation.METRICS.items()}, seeds=[seed])
  results["summary"] = summary.summarize(results, tolerance=0.03)
  return results


def test_a_registered_metric_reaches_results_json_and_the_report(monkeypatch):
  monkeypatch.setattr(evaluation, "METRICS",
                      evaluation.registry(*evaluation.METRICS.values(), MEAN_ABOVE_0))
  ctx = _context()
  results = _results(ctx, {"cfg:w=3": (0, 1, 2, 4), "amg": (0,)})
  row = results["seeds"][0]["arms"]["cfg:w=3"]
  assert row["flags"]["mean_above_0"] == "11101000"
  assert results["metrics"]["mean_above_0"] == "the sample's mean pixel is above 0"
  assert results["seeds"][0]["applies"]["mean_above_0"] == "1" * N
  groups = row["groups"]
  assert (groups["all"]["mean_above_0"]["k"], groups["all"]["mean_above_0"]["n"]) == (4, 8)
  assert (groups["other"]["mean_above_0"]["k"], groups["other"]["mean_above_0"]["n"]) == (1, 4)
  pooled = results["summary"]["arms"]["cfg:w=3"]["metrics"]["mean_above_0"]  # its own group
  ci = stats.wilson_interval(3, 4)
  assert (pooled["k"], pooled["n"], pooled["rate"], pooled["ci"]) == (3, 4, 0.75, [ci.low, ci.high])
  alignment = results["summary"]["arms"]["cfg:w=3"]["alignment"]  # the alignment role
  assert (alignment["k"], alignment["n"]) == (6, 8)
  text = report.render(results)
  table = text.split("## Every arm (paired against `cfg:w=3`)")[1].split("\n\n")[1].splitlines()
  assert table[0] == ("| arm | family | ratio test, memorized | class acc. | mean > 0, memorized | FD "
                      "| Δcopy (pts) | Δacc. (pts) | transition t (fired) | samples/s |")
  cells = table[2].split(" | ")
  assert cells[0] == "| `cfg:w=3`" and cells[4] == f"75.0% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"
  assert table[3].split(" | ")[4].startswith("25.0% ")  # amg: 1 of 4 memorized rows


def test_without_a_column_a_metric_stays_in_results_json_only(monkeypatch):
  quiet = evaluation.Metric("mean_above_0", "the sample's mean pixel is above 0", _mean_above_0)
  monkeypatch.setattr(evaluation, "METRICS", evaluation.registry(*evaluation.METRICS.values(), quiet))
  results = _results(_context(), {"cfg:w=3": (0,), "amg": ()})
  assert results["summary"]["arms"]["amg"]["metrics"]["mean_above_0"]["n"] == 8  # group "all"
  assert "mean_above_0" not in report.render(results)


def test_the_detection_block_comes_from_the_registered_arm_scores():
  ctx = _context()
  row = engine.evaluate_arm(ctx, ctx, _result(()), seed=0, fd_resamples=10)
  det = row["detection"]  # no copy calibration: no copy flag, so no `copies` target
  assert list(det) == ["auc_mean_d_eps_memorized", "auc_first_d_eps_memorized", "figures"]
  assert det["auc_mean_d_eps_memorized"] == 1.0 and det["auc_first_d_eps_memorized"] == 1.0
  assert list(det["figures"]) == ["memorized"]
  assert list(det["figures"]["memorized"]) == list(evaluation.DETECTION_SCORES)
  copies = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
  full = evaluation.detection(ctx, _result(()).d_eps, _result(()).d_x0, {"copy": copies})
  assert list(full) == ["auc_mean_d_eps_memorized", "auc_first_d_eps_memorized",
                        "auc_mean_d_eps_copies", "figures"]
  # copies score 2.00 and 1.04; the rest 2.01, 2.02, 2.03, 1.05, 1.06, 1.07: 2.00 beats three of
  # them, 1.04 none, so 3 of 12 pairs are ranked right
  assert full["auc_mean_d_eps_copies"] == pytest.approx(0.25)


def test_registry_refuses_a_name_or_role_twice_and_an_unknown_role():
  copy = evaluation.METRICS["copy"]
  with pytest.raises(ValueError, match="registered twice"):
    evaluation.registry(copy, copy)
  with pytest.raises(ValueError, match="both have role 'copy'"):
    evaluation.registry(copy, evaluation.Metric("copy2", "x", copy.fn, role="copy"))
  with pytest.raises(ValueError, match="role 'copies' is not one of copy, alignment"):
    evaluation.Metric("x", "x", copy.fn, role="copies")
  assert evaluation.by_role("copy") is copy
  assert evaluation.by_role("alignment").name == "class_correct"


def _old_results():
  """A results.json written before the calibrated metric and the `applies` masks: its `copy` is
  the ratio test; row 3 requests no class."""
  seed = dict(conditions=dict(groups_mask=dict(memorized="1100", other="0011"),
                              requested_class=[0, 0, 5, -1]),
              arms={a: dict(flags=dict(copy=c, copy_target="1000", class_correct=k))
                    for a, (c, k) in {"cfg:w=3": ("1100", "1110"), "amg": ("0100", "1010")}.items()})
  return dict(baseline="cfg:w=3", arms=[dict(label="cfg:w=3", family="cfg"),
                                        dict(label="amg", family="amg")], seeds=[seed])


def test_old_results_are_read_through_the_one_mapping():
  old = _old_results()
  stored = evaluation.stored_metrics(old)
  assert stored.roles == {"copy": "copy_ratio", "alignment": "class_correct"}
  assert stored.role("copy") == ("memorized", "copy_ratio")
  seed = stored.results["seeds"][0]
  assert set(seed["arms"]["amg"]["flags"]) == {"copy_ratio", "copy_ratio_target", "class_correct"}
  assert seed["applies"] == {"copy_ratio": "1111", "copy_ratio_target": "1111",
                             "class_correct": "1110"}
  assert "applies" not in old["seeds"][0] and "copy" in old["seeds"][0]["arms"]["amg"]["flags"]
  s = summary.summarize(old, tolerance=0.03)
  arm = s["arms"]["cfg:w=3"]
  assert (arm["copy_memorized"]["k"], arm["copy_memorized"]["n"]) == (2, 2)  # the ratio test
  assert (arm["alignment"]["k"], arm["alignment"]["n"]) == (3, 3)  # row 3 requests no class
  assert arm["metrics"]["copy_ratio_target"]["k"] == 1
  assert s["arms"]["amg"]["vs_baseline"]["copy"]["only_baseline"] == 1
