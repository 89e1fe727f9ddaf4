"""Clustered statistics: cluster bootstrap weights, sign-flip p, Holm, and the study's units."""
import numpy as np
import pytest

from minidiff.metrics import stats
from minidiff.study import clustered


def test_cluster_weights_draw_whole_clusters():
  w = stats.cluster_weights(np.array([0, 0, 1, 1]), num_resamples=200, seed=0)
  assert np.all(w.sum(axis=1) == 4)  # two clusters of two drawn each time: 2 × 2 units
  cluster0 = w[:, :2].sum(axis=1)
  assert set(np.unique(cluster0)) <= {0.0, 2.0, 4.0}  # a cluster is in 0, 1 or 2 times
  assert (cluster0 == 0).any() and (cluster0 == 4).any()


def test_sign_flip_p_is_exact_for_few_units():
  assert stats.sign_flip_p([1, 1, 1]) == pytest.approx(2 / 8)  # only all + or all − reach |3|
  assert stats.sign_flip_p([0, 0]) == 1.0
  assert stats.sign_flip_p(np.ones(40), num_draws=2000) < 0.001


def test_holm_adjusts_in_order_and_keeps_missing_values():
  # sorted 0.01, 0.03, 0.04 → 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06
  assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])


def _results(copies: dict, correct: dict, *, target, requested, seeds=2):
  mask = lambda v: "".join("1" if x else "0" for x in v)  # noqa: E731
  n = len(target)
  conditions = dict(target_image=list(target), requested_class=list(requested),
                    groups_mask=dict(memorized=mask(np.asarray(target) >= 0),
                                     other=mask(np.asarray(target) < 0)))
  seed_blocks = []
  for s in range(seeds):
    arms = {a: dict(flags=dict(copy=mask(copies[a][s]), class_correct=mask(correct[a][s])))
            for a in copies}
    seed_blocks.append(dict(conditions=conditions, arms=arms,
                            applies=dict(copy=mask(np.asarray(target) >= 0),
                                         class_correct=mask(np.ones(n, bool)))))
  return dict(seeds=seed_blocks)


def test_paired_difference_per_seed_and_pooled():
  target, requested = [5, 5, 7, 7, -1, -1], [0, 0, 1, 1, 2, 3]
  copies = {"base": [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]],
            "arm": [[0, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]]}
  ones = [[1] * 6] * 2
  r = _results(copies, {"base": ones, "arm": ones}, target=target, requested=requested)
  u = clustered.units(r, num_resamples=50)
  d = clustered.paired(r, u, "arm", "base", "memorized", "copy")
  # seed 0: −1/4, seed 1: −2/4 over the 4 memorized rows; pooled −3/8
  assert d["per_seed"] == pytest.approx([-0.25, -0.5]) and d["diff"] == pytest.approx(-0.375)
  assert d["directions"] == "−−" and d["n_clusters"] == 2
  rate = clustered.rate(r, u, "base", "memorized", "copy")
  assert rate["rate"] == pytest.approx(7 / 8) and rate["ci"][0] <= 7 / 8 <= rate["ci"][1]


def test_equal_alignment_interpolates_the_cfg_curve():
  target, requested = [5, 5, 5, 5, -1, -1, -1, -1], [0, 0, 0, 0, 1, 1, 1, 1]
  row = lambda *v: [list(v)]  # noqa: E731
  copies = {"cfg_lo": row(0, 0, 0, 0, 0, 0, 0, 0), "cfg_hi": row(1, 1, 1, 1, 0, 0, 0, 0),
            "arm": row(1, 0, 0, 0, 0, 0, 0, 0)}
  correct = {"cfg_lo": row(1, 1, 1, 1, 0, 0, 0, 0), "cfg_hi": row(1, 1, 1, 1, 1, 1, 1, 1),
             "arm": row(1, 1, 1, 1, 1, 1, 0, 0)}
  r = _results(copies, correct, target=target, requested=requested, seeds=1)
  u = clustered.units(r, num_resamples=100)
  e = clustered.equal_alignment(r, u, "arm", ["cfg_lo", "cfg_hi"], copy=("memorized", "copy"),
                                alignment=("all", "class_correct"))
  # CFG: (alignment 0.5, copy 0) and (1.0, 1.0); the arm at alignment 0.75 → CFG copies 0.5 there
  assert e["cfg_copy_at_alignment"] == pytest.approx(0.5) and e["diff"] == pytest.approx(0.25 - 0.5)
  outside = clustered.equal_alignment(r, u, "cfg_lo", ["cfg_hi", "arm"], copy=("memorized", "copy"),
                                      alignment=("all", "class_correct"))
  assert outside["cfg_copy_at_alignment"] is None  # alignment 0.5 lies below the curve's range
