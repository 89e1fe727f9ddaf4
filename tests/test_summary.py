"""Study statistics from per-sample flags: pooling over seeds, pairing, the frontier's headline."""
import pytest

from minidiff.metrics import stats
from minidiff.study import summary


def _seed(flags):
  # 4 samples: the first two on memorized conditions, every one requests a class.
  return dict(conditions=dict(groups_mask=dict(memorized="1100", other="0011"),
                              requested_class=[0, 0, 5, 6]),
              arms={label: dict(flags=dict(copy=c, class_correct=a)) for label, (c, a) in flags.items()})


RESULTS = dict(
    baseline="cfg:w=7.5",
    arms=[dict(label="cfg:w=7.5", family="cfg"), dict(label="cfg:w=2", family="cfg"),
          dict(label="static:tau=400", family="static"), dict(label="opposite:tau=500", family="opposite")],
    seeds=[_seed({"cfg:w=7.5": ("1100", "1111"), "cfg:w=2": ("1000", "1110"),
                  "static:tau=400": ("0000", "1111"), "opposite:tau=500": ("0000", "0011")}),
           _seed({"cfg:w=7.5": ("1100", "1111"), "cfg:w=2": ("0100", "1111"),
                  "static:tau=400": ("1000", "1111"), "opposite:tau=500": ("0000", "0101")})])


def test_pooled_rates_sum_the_seeds_and_keep_the_per_seed_values():
  r = summary.pooled_rate(RESULTS, "cfg:w=2", "memorized", "copy")
  assert (r["k"], r["n"]) == (2, 4) and r["per_seed"] == [0.5, 0.5]
  ci = stats.wilson_interval(2, 4)
  assert r["ci"] == [ci.low, ci.high]
  assert summary.pooled_rate(RESULTS, "cfg:w=2", "all", "class_correct")["k"] == 7


def test_paired_against_the_baseline_counts_discordant_noises_over_seeds():
  d = summary.paired(RESULTS, "static:tau=400", "cfg:w=7.5", "memorized", "copy")
  # Memorized rows: baseline copies 4 of 4; static copies 1 (seed 1, row 0): 3 only-baseline pairs.
  assert (d["only_baseline"], d["only_arm"], d["n"]) == (3, 0, 4)
  assert d["diff"] == pytest.approx(-0.75)
  assert d["p"] == pytest.approx(stats.mcnemar_exact(3, 0))  # 2·(1/8) = 0.25
  assert len(d["per_seed"]) == 2


def test_headline_picks_per_family_the_least_copying_arm_at_cfg_alignment():
  s = summary.summarize(RESULTS, tolerance=0.03)
  fr = s["frontier"]
  assert fr["reference"]["arm"] == "cfg:w=7.5" and fr["reference"]["alignment"] == 1.0
  rows = {r["family"]: r for r in fr["headline"]}
  assert rows["cfg"]["arm"] == "cfg:w=7.5"  # cfg:w=2 has 7/8 alignment: outside 3 points
  assert rows["static"]["arm"] == "static:tau=400"
  assert rows["static"]["vs_cfg"]["copy"]["diff"] == pytest.approx(-0.75)
  assert rows["opposite"]["arm"] is None  # 4/8 alignment
  assert s["baseline"] == "cfg:w=7.5"
  # No `copy_ratio` flags: written before the calibrated metric, so its `copy` is the ratio test.
  assert s["roles"] == {"copy": "copy_ratio", "alignment": "class_correct"}
  arm = s["arms"]["cfg:w=2"]
  assert set(arm["metrics"]) == {"copy_ratio", "class_correct"}
  assert arm["metrics"]["copy_ratio"] == arm["copy_memorized"]  # its group: memorized
  assert arm["metrics"]["class_correct"] == arm["alignment"]


def test_baseline_defaults_to_the_largest_w_cfg_arm_and_a_bad_one_is_named():
  class S:
    def __init__(self, w):
      self.w = w
  arms = [("none", "cfg", S(0.0)), ("cfg:w=3", "cfg", S(3.0)), ("static", "static", object())]
  assert summary.choose_baseline(arms, None) == "cfg:w=3"
  with pytest.raises(ValueError, match="--baseline='x' is not one of the arms"):
    summary.choose_baseline(arms, "x")


def test_fd_interval_is_recentred_on_the_estimate():
  import numpy as np
  from minidiff.study import evaluation
  rng = np.random.default_rng(0)
  reference = rng.normal(size=(300, 4))
  samples = rng.normal(loc=0.5, size=(60, 4))
  fd = evaluation.frechet_with_interval(samples, reference, seed=0, num_resamples=100)
  assert fd["ci"][0] < fd["value"] < fd["ci"][1]
  assert fd["bootstrap_bias"] > 0  # resampled rows repeat: FD rises
  again = evaluation.frechet_with_interval(samples, reference, seed=0, num_resamples=100)
  assert again == fd  # deterministic per seed
