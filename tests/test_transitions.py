"""Transition detectors on hand-made sequences, the two-pass rule, and k* / the oracle / scoring."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance, samplers, specs, transitions
from minidiff.core.schedule import linear_schedule
from minidiff.study import arms as arms_lib
from minidiff.study import transitions as study_tr

SCHEDULE = linear_schedule(1000)
SHAPE = (4, 4, 1)


def fire(rule, d, measure_x0=False):
  """k̂ of `rule` on one hand-made sequence d [S] (given as both measures)."""
  d = np.asarray(d, np.float32)[:, None]
  grid = np.arange(len(d))[::-1] * 10
  return int(transitions.fire_steps(rule, d, d, t=grid, schedule=SCHEDULE)[0])


# --- hand-made d sequences ----------------------------------------------------------------------


def test_authors_rule_through_fire_steps_is_the_first_strict_local_minimum():
  rule = guidance.DynamicTransition(w_pre=1.0, w_post=7.5)
  assert fire(rule, [3, 2, 1, 2, 0, 5]) == 3  # minimum at k = 2, seen at k = 3
  assert fire(rule, [1, 2, 3, 4]) == -1  # rising: never
  assert fire(rule, [2, 1, 1, 2]) == -1  # equal values are not a strict minimum
  assert fire(guidance.DynamicTransition(min_step=5), [3, 2, 3, 4, 3, 4]) == 5


def test_peak_drop_fires_once_d_falls_to_a_fraction_of_its_running_peak():
  rule = transitions.PeakDrop(measure="x0", fraction=0.5)
  # peak 8 at k = 2; 4.5 > 4 does not fire; 4.0 ≤ 0.5·8 fires at k = 4; latched after.
  assert fire(rule, [2, 5, 8, 4.5, 4.0, 9, 1]) == 4
  assert fire(rule, [1, 2, 3, 2.9, 2.0]) == -1  # never below half of 3
  # a fall in the first steps counts only from min_step on: 10 → 1 at k = 1 is ignored
  assert fire(transitions.PeakDrop(fraction=0.5, min_step=3), [10, 1, 1.2, 0.5]) == 3
  with pytest.raises(ValueError, match="fraction"):
    transitions.PeakDrop(fraction=1.0)


def test_peak_passed_fires_lag_steps_after_the_last_new_peak():
  rule = transitions.PeakPassed(measure="eps", lag=2)
  # new peaks at k = 0, 1, 2; k = 3 and 4 stay below 5: two steps without a new peak → k = 4
  assert fire(rule, [1, 3, 5, 4, 4.5, 6]) == 4
  assert fire(rule, [1, 2, 3, 4, 5]) == -1  # a new peak every step
  assert fire(transitions.PeakPassed(lag=1), [1, 3, 2]) == 2
  with pytest.raises(ValueError, match="lag"):
    transitions.PeakPassed(lag=0)


def test_rule_specs_parse_to_the_rules_with_their_parameters():
  got = [g.strategy for g in specs.parse_guidance(
      "peak_drop:fraction=0.7:measure=eps,peak_passed:lag=2:min_step=4:w_pre=1,peak_drop", T=1000)]
  assert got == [transitions.PeakDrop(fraction=0.7, measure="eps"),
                 transitions.PeakPassed(lag=2, min_step=4, w_pre=1.0),
                 transitions.PeakDrop()]  # defaults: w_pre 0 → w_post 7.5, x0, fraction 0.5
  assert specs.strategy_params("peak_passed") == dict(w_pre=0.0, w_post=7.5, measure="eps", lag=3,
                                                      min_step=2)
  sweep = specs.parse_guidance("peak_drop:fraction=0.3,0.5", T=1000, overrides={"w_post": "3"})
  assert [(g.strategy.fraction, g.strategy.w_post) for g in sweep] == [(0.3, 3.0), (0.5, 3.0)]
  for bad, match in (("peak_drop:fraction=1", "fraction"), ("peak_passed:lag=1.5", "integer"),
                     ("peak_passed:tau=3", "no parameter"), ("peak_drops", "peak_passed")):
    with pytest.raises(ValueError, match=match):
      specs.parse_guidance(bad, T=1000)
  # the study's arms: one per value, in the dynamic family
  assert [(a.label, a.family, a.strategy) for a in arms_lib.parse_arms("peak_drop:fraction=0.3,peak_passed",
                                                                   T=1000)] == [
      ("peak_drop:fraction=0.3", "dynamic", transitions.PeakDrop(fraction=0.3)),
      ("peak_passed", "dynamic", transitions.PeakPassed())]


@pytest.mark.parametrize("spec, d, expected", [
    ("peak_drop:fraction=0.5:measure=x0", [2, 5, 8, 4.5, 4.0, 9, 1], 4),  # the sequences above
    ("peak_passed:lag=2", [1, 3, 5, 4, 4.5, 6], 4),
])
def test_a_rule_spec_arm_fires_in_the_sampler_where_the_rule_does_on_its_sequence(spec, d, expected):
  (arm,) = specs.parse_guidance(spec, T=1000)
  rule = arm.strategy
  assert fire(rule, d) == expected
  S = len(d)  # noqa: N806
  grid = samplers.time_grid(1000, S)
  # A denoiser whose ε_c − ε_u at step k is d_k (x0 measure: d_k / σ_{t_k}, as d_x0 = d_eps · σ_t)
  # along a unit vector, whatever x_t: the sampler records exactly the hand-made d.
  sigma = np.asarray(SCHEDULE.sigma(grid))
  table = np.zeros(1000, np.float32)
  table[grid] = np.asarray(d) / (sigma if rule.measure == "x0" else 1.0)
  unit = jnp.full(SHAPE, 1.0 / np.sqrt(np.prod(SHAPE)))

  def eps_fn(x, t, cond):
    return 0.5 * x + (jnp.asarray(table)[t] * (cond != 9))[:, None, None, None] * unit

  x_T = jnp.asarray(np.random.default_rng(3).standard_normal((2,) + SHAPE), jnp.float32)  # noqa: N806
  _, diag = samplers.sample(eps_fn, SCHEDULE, x_T, jnp.asarray([0, 1]), jnp.full((2,), 9),
                            jax.random.key(0), strategy=rule, num_steps=S)
  np.testing.assert_allclose(getattr(diag, f"d_{rule.measure}")[:, 0], d, rtol=1e-4)
  np.testing.assert_array_equal(diag.transition_step, [expected, expected])
  w = [rule.w_pre] * expected + [rule.w_post] * (S - expected)  # w_pre before k̂, w_post from it
  np.testing.assert_array_equal(diag.w[:, 0], w)


def test_offline_rules_equal_the_same_rules_run_inside_the_sampler():
  # A denoiser whose d oscillates with a class-dependent phase: the rules fire at different steps.
  def eps_fn(x, t, cond):
    amp = jnp.where(cond == 3, 0.0, 1.5 + jnp.cos(t / 60.0 + 1.3 * cond))
    return 0.5 * x + 0.1 * amp[:, None, None, None]

  x_T = jnp.asarray(np.random.default_rng(0).standard_normal((3,) + SHAPE), jnp.float32)  # noqa: N806
  cond, null, key = jnp.asarray([0, 1, 2]), jnp.full((3,), 3), jax.random.key(0)
  _, pre = samplers.sample(eps_fn, SCHEDULE, x_T, cond, null, key, strategy=guidance.Constant(w=0.0),
                           num_steps=30, compute_d=True)
  for rule in (guidance.DynamicTransition(w_pre=0.0), transitions.PeakDrop(w_pre=0.0, fraction=0.7),
               transitions.PeakPassed(w_pre=0.0, lag=2, measure="x0")):
    offline = transitions.fire_steps(rule, pre.d_eps, pre.d_x0, t=pre.t, schedule=SCHEDULE)
    _, online = samplers.sample(eps_fn, SCHEDULE, x_T, cond, null, key, strategy=rule, num_steps=30)
    np.testing.assert_array_equal(offline, online.transition_step)
    assert (np.asarray(offline) >= 0).all()


# --- the authors' two-pass rule --------------------------------------------------------------------


def two_pass_reference(c, fallback=5):
  """Plain Python: scipy's argrelextrema(c, np.less) minima, then the authors' index-1 rule."""
  minima = [i for i in range(1, len(c) - 1) if c[i] < c[i - 1] and c[i] < c[i + 1]]
  if not minima:
    return fallback
  return minima[1] if minima[0] == 1 and len(minima) >= 2 else minima[0]


@pytest.mark.parametrize("c, expected", [
    ([5, 4, 3, 2, 3, 1, 2], 3),  # first minimum at index 3
    ([5, 1, 2, 3, 0.5, 4], 4),  # first at index 1: take the second
    ([5, 1, 2, 3, 4, 5], 1),  # only a minimum at index 1: keep it
    ([1, 2, 3, 4, 5, 6], 5),  # none: the fallback step
    ([3, 2, 2, 3, 1, 1.5], 4),  # a flat bottom is no strict minimum
])
def test_two_pass_transition_on_hand_made_sequences(c, expected):
  assert two_pass_reference(c) == expected
  got = transitions.two_pass_transition(np.asarray(c, np.float32)[:, None], fallback_step=5)
  assert int(got[0]) == expected


def test_two_pass_transition_is_per_sample():
  rng = np.random.default_rng(1)
  c = rng.uniform(size=(20, 64)).astype(np.float32)
  got = np.asarray(transitions.two_pass_transition(c, fallback_step=7))
  np.testing.assert_array_equal(got, [two_pass_reference(list(c[:, b]), 7) for b in range(64)])


def test_two_pass_program_equals_the_two_passes_by_hand():
  def eps_fn(x, t, cond):
    means = jnp.asarray([-0.4, 0.2, 0.5, 0.0])[cond].reshape((-1, 1, 1, 1))  # class 3 = null
    ab = SCHEDULE.alpha_bar[t].reshape((-1, 1, 1, 1))
    return jnp.sqrt(1.0 - ab) * (x - jnp.sqrt(ab) * means) / (ab * 0.09 + 1.0 - ab)

  x_T = jnp.asarray(np.random.default_rng(2).standard_normal((3,) + SHAPE), jnp.float32)  # noqa: N806
  cond, null, key = jnp.asarray([0, 1, 2]), jnp.full((3,), 3), jax.random.key(0)
  s, w_post, S = 3.0, 5.0, 20  # noqa: N806
  x0, diag, two = jax.jit(lambda x: samplers.sample_two_pass(
      eps_fn, SCHEDULE, x, cond, null, key, s=s, w_post=w_post, num_steps=S))(x_T)
  # pass 1 by hand: DDIM steps under w = −s, 1 − cos between consecutive iterates
  grid = samplers.time_grid(1000, S)
  x, cos = x_T, []
  for k, t in enumerate(grid):
    tb = jnp.full((3,), t)
    eps = guidance.guide(eps_fn(x, tb, cond), eps_fn(x, tb, null), jnp.full((3,), -s))
    x_next, _ = samplers.ddim_step(SCHEDULE, x, eps, t, grid[k + 1] if k + 1 < S else -1, key)
    a, b = np.asarray(x, np.float64).reshape(3, -1), np.asarray(x_next, np.float64).reshape(3, -1)
    cos.append(1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    x = x_next
  cos = np.stack(cos)
  np.testing.assert_allclose(two.cos_dist, cos, rtol=1e-3, atol=1e-6)
  tp = [two_pass_reference(list(cos[:, b])) for b in range(3)]
  np.testing.assert_array_equal(two.transition_step, tp)
  # pass 2 by hand: each sample alone with a static switch at its own step
  for b in range(3):
    strategy = guidance.StaticTransition(w_pre=-s, tau=int(grid[tp[b]]), w_post=w_post)
    ref, ref_diag = samplers.sample(eps_fn, SCHEDULE, x_T[b:b + 1], cond[b:b + 1], null[b:b + 1],
                                    key, strategy=strategy, num_steps=S)
    np.testing.assert_allclose(x0[b:b + 1], ref, atol=1e-5)
    np.testing.assert_array_equal(diag.w[:, b], ref_diag.w[:, 0])
  np.testing.assert_array_equal(diag.transition_step, tp)


def test_two_pass_rejects_bad_options_before_tracing():
  def eps_fn(x, t, c):
    raise AssertionError("not traced")
  args = (eps_fn, SCHEDULE, jnp.zeros((1,) + SHAPE), jnp.zeros(1), jnp.zeros(1), jax.random.key(0))
  with pytest.raises(ValueError, match="s must"):
    samplers.sample_two_pass(*args, s=-1.0)
  with pytest.raises(ValueError, match="fallback_step"):
    samplers.sample_two_pass(*args, num_steps=5, fallback_step=5)


# --- k*, the oracle and the scoring -------------------------------------------------------------


def test_k_star_monotone_and_rows():
  # 3 noises, switch steps 0, 2, 4, 6 (6 = never); copy flags per step
  copied = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
  steps = [0, 2, 4, 6]
  np.testing.assert_array_equal(study_tr.k_star(copied, steps), [4, 2, 0])
  assert study_tr.monotone_fraction(copied) == pytest.approx(2 / 3)  # noise 1 copies again at 4
  np.testing.assert_array_equal(study_tr.k_star(np.ones((4, 2), bool), steps), [-1, -1])
  np.testing.assert_array_equal(study_tr.rows_at(steps, np.array([-1, 2, 9])), [3, 1, 3])
  with pytest.raises(ValueError, match="not on the sweep"):
    study_tr.rows_at(steps, np.array([3]))


def test_analyse_oracle_detectors_and_best_tau():
  # Switch steps 0…4 (4 = never), 4 noises; copies stop at k* = 1, 2, 3, 0; class is lost from
  # step 3 on for every noise.
  steps = np.arange(5)
  k_true = np.array([1, 2, 3, 0])
  copied = steps[:, None] < k_true[None, :]
  correct = np.repeat((steps < 3)[:, None], 4, axis=1)
  out = study_tr.Outcomes(steps=steps, t=np.array([40, 30, 20, 10]), copied=copied, correct=correct)
  r = study_tr.analyse(out, {"exact": k_true, "late": np.array([3, 3, 3, 3]),
                             "never": np.full(4, -1)})
  assert r["k_star"] == [1, 2, 3, 0] and r["monotone"] == 1.0
  assert r["oracle"][0]["copy"]["rate"] == 0.0  # switching at k*: no copies by definition
  assert r["oracle"][0]["alignment"]["rate"] == 0.75  # noise 2's k* = 3 already loses the class
  # the best switch per noise: no step of noise 2 is both safe and in class → its earliest safe one
  assert r["oracle_best"]["steps"] == [1, 2, 3, 0] and r["oracle_best"]["copy"]["rate"] == 0.0
  assert len(r["flags"]["copied"]) == 5 and r["flags"]["copied"][0] == "1110"
  keep = r["oracle_best"]["keep_class"]  # noise 2 falls back to CFG from step 0: a copy, in class
  assert keep["steps"] == [1, 2, 0, 0] and keep["copy"]["rate"] == 0.25
  assert keep["alignment"]["rate"] == 1.0
  # best τ: alignment within 0.03 of CFG from step 0 (1.0) → steps 0–2; step 2 copies 1/4
  assert r["best_tau"]["step"] == 2 and r["best_tau"]["copy"]["rate"] == 0.25
  ex = r["detectors"]["exact"]
  assert ex["lag"]["median"] == 0 and ex["lag"]["within"] == 1.0 and ex["lag"]["never_fired"] == 0
  late = r["detectors"]["late"]
  assert late["copy"]["rate"] == 0.0 and late["alignment"]["rate"] == 0.0
  assert late["lag"]["median"] == pytest.approx(1.5)  # lags 2, 1, 0, 3
  never = r["detectors"]["never"]
  assert never["lag"]["never_fired"] == 1.0 and never["lag"]["n"] == 0
  assert never["copy"]["rate"] == 0.0  # never switching = the last row
  # paired against the best τ on the same noises: exact removes the one copy (noise 2)
  assert ex["vs_best_tau"]["copy"]["diff"] == pytest.approx(-0.25)


def test_k_star_on_the_exact_denoiser_equals_basins_measurement():
  """The study's sweep (one shared prefix) finds the same k* as basin.py's per-arm sweep."""
  from minidiff.data import datasets as data
  from minidiff.theory import basin

  R, N, S = 16, 16, 50  # noqa: N806
  ds = data.load_dataset("mnist_offline", resolution=R)
  setup = basin.build_setup(ds.images, ds.labels, SCHEDULE, memorized=3, control=7, atom_weight=0.7)
  noise = np.random.default_rng(0).standard_normal((N, R, R, 1)).astype(np.float32)
  grid = samplers.time_grid(1000, S, "linspace")
  sweep = list(range(10, 41, 3))
  # basin.py: one arm per static τ = t_k, run as one batch, then transition_from_sweep
  x0, _ = basin.run_arms(basin.make_runner(num_steps=S), setup, noise,
                         [basin.Arm(0.0, tau=int(grid[k])) for k in sweep])
  expected = basin.transition_from_sweep(basin.copies(x0, setup), sweep, S)
  # the study's way: the shared-prefix family at the same switch steps, then k_star
  den = setup.denoiser
  cond = jnp.full((N,), setup.memorized, jnp.int32)
  null = jnp.full((N,), setup.null_id, jnp.int32)
  fam, _ = jax.jit(lambda x: samplers.sample_switch_family(
      den.eps, den.schedule, x, cond, null, jax.random.key(0), w_pre=0.0, w_post=7.5,
      switch_steps=jnp.asarray(sweep), num_steps=S, spacing="linspace"))(jnp.asarray(noise))
  got = study_tr.k_star(basin.copies(np.asarray(fam), setup), sweep, none=S)
  np.testing.assert_array_equal(got, expected)
  assert len(set(expected.tolist())) >= 3  # the transition really is per sample


def test_sample_chunks_reads_back_the_chunks_of_a_smaller_study_and_pads_the_last(tmp_path):
  """A chunk is keyed by its rows, noises and conditions (token ids here, as in a text study), not
  by the study's N: a larger --num reads back the first chunks."""
  calls = []

  def sample(x, cond, key):
    calls.append(x.shape[0])
    return dict(samples=2 * x, tokens=cond, d=np.tile(x[:, 0, 0, 0], (3, 1)), t=np.arange(3))

  rng = np.random.default_rng(0)
  x = rng.standard_normal((5, 2, 2, 1)).astype(np.float32)
  tokens = rng.integers(0, 50, (5, 4)).astype(np.int32)
  kw = dict(chunk=2, cache=str(tmp_path), meta=dict(arm="a"),
            axes=dict(samples=0, tokens=0, d=1, t=None))
  out, _, fresh = study_tr.sample_chunks("a", sample, x[:3], tokens[:3], jax.random.key(0), **kw)
  assert fresh == 2 and calls == [2, 2]  # rows 0–1, then row 2 padded to 2 rows (one compile)
  np.testing.assert_array_equal(out["samples"], 2 * x[:3])
  np.testing.assert_array_equal(out["tokens"], tokens[:3])
  assert out["d"].shape == (3, 3) and out["t"].tolist() == [0, 1, 2]
  out, _, fresh = study_tr.sample_chunks("a", sample, x, tokens, jax.random.key(0), **kw)
  assert fresh == 2  # rows 0–1 read back; rows 2–3 (a different chunk than row 2 alone) and 4 new
  np.testing.assert_array_equal(out["samples"], 2 * x)
  np.testing.assert_array_equal(out["d"][1], x[:, 0, 0, 0])
  _, _, fresh = study_tr.sample_chunks("a", sample, x, tokens[::-1], jax.random.key(0), **kw)
  assert fresh == 3  # other conditions: every chunk anew
  _, _, fresh = study_tr.sample_chunks("a", sample, x, tokens[::-1], jax.random.key(0),
                                       **(kw | dict(meta=dict(arm="b"))))
  assert fresh == 3  # another arm (or model, or option) too


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("classifier_cache"))  # both tiny runs are 8×8 MNIST


def test_the_study_end_to_end_on_the_tiny_run(tiny_run, tmp_path, classifier_cache):
  """Sweep, detectors, the two-pass and dynamic arms, the write-up; a rerun reuses the samples,
  also with a larger --num (its first noises are the same)."""
  import json
  import os
  kw = dict(num=4, w_pre=0.0, w_post=3.0, two_pass_s=[2.0], dynamic_w_pre=1.0, chunk=2,
            cache=str(tmp_path / "cache"), classifier_cache=classifier_cache, use=2)
  r = study_tr.study(tiny_run, outdir=str(tmp_path / "out"), **kw)
  S = r["num_steps"]  # noqa: N806
  assert r["steps"] == list(range(S + 1)) and r["n"] == 2 and len(r["k_star"]) == 2
  assert set(r["detectors"]) == set(study_tr.default_detectors(w_pre=0.0, w_post=3.0))
  assert set(r["extra"]) == {"two_pass_s2", "authors_dynamic_w_pre1"}
  assert len(r["extra"]["two_pass_s2"]["k_hat"]) == 2
  assert r["extra"]["two_pass_s2"]["lag"] is None  # its w_pre −2 is not the sweep's 0
  assert r["sampled_chunks"] == {"sweep": 1, "two_pass_s2": 1, "authors_dynamic": 1}
  for name in ("results.json", "report.md", "k_star.png", "frontier.png"):
    assert os.path.exists(tmp_path / "out" / name), name
  assert json.load(open(tmp_path / "out" / "results.json"))["k_star"] == r["k_star"]
  again = study_tr.study(tiny_run, outdir=str(tmp_path / "out2"), **(kw | dict(num=6)))
  assert again["sampled_chunks"] == {"sweep": 0, "two_pass_s2": 0, "authors_dynamic": 0}
  assert again["timing"] == r["timing"]  # every chunk and arm read back, nothing resampled
  assert again["k_star"] == r["k_star"]
  with pytest.raises(ValueError, match="--use"):
    study_tr.study(tiny_run, outdir=str(tmp_path / "out3"), **(kw | dict(use=3)))


def test_the_study_on_the_tiny_text_run(tiny_text_run, tmp_path, classifier_cache):
  """Text conditions (the memorized caption, cycled) through the opposite-guidance sweep, whose
  k* scores the two-pass rule, and the dynamic arm."""
  r = study_tr.study(tiny_text_run, num=2, w_pre=-2.0, w_post=3.0, two_pass_s=[2.0],
                     dynamic_w_pre=1.0, chunk=2, cache=str(tmp_path / "cache"),
                     classifier_cache=classifier_cache, outdir=str(tmp_path / "out"))
  assert r["kind"] == "text" and r["conditions"] == "the 1 memorized caption, cycled"
  assert r["n"] == 2 and len(r["flags"]["copied"]) == r["num_steps"] + 1
  assert r["extra"]["two_pass_s2"]["lag"]["never_fired"] == 0.0  # w_pre = −s: scored against k*
  assert len(r["extra"]["authors_dynamic_w_pre1"]["k_hat"]) == 2
  assert "the image the caption names" in (tmp_path / "out" / "report.md").read_text()
