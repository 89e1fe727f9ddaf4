"""Tests for minidiff.core.guidance: the guided prediction, branch batching and every strategy's w."""
from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance
from minidiff.core import registry
from minidiff.core import samplers
from minidiff.core.schedule import linear_schedule

# The strategies of minidiff.core.guidance (the w-choosing rules), in registry order.
GUIDANCE_NAMES = tuple(n for n in registry.RULE_NAMES
                       if registry.RULES[n].__module__ == guidance.__name__)

SCHEDULE = linear_schedule(1000)


def run_strategy(strategy, ts, d_eps, d_x0=None, schedule=SCHEDULE):
  """Drives `strategy.weight` over steps k = 0…S−1; returns (w [S, B], transition_step [B])."""
  d_eps = np.asarray(d_eps, np.float32).reshape(len(ts), -1)
  d_x0 = d_eps if d_x0 is None else np.asarray(d_x0, np.float32).reshape(d_eps.shape)
  state = strategy.init_state(d_eps.shape[1])
  ws = []
  for k, t in enumerate(ts):
    w, state = strategy.weight(state, k, jnp.int32(t), jnp.asarray(d_eps[k]), jnp.asarray(d_x0[k]),
                               schedule=schedule)
    ws.append(np.asarray(w))
  return np.stack(ws), np.asarray(state.transition_step)


def dynamic_reference(d, *, min_step=2, peak_fraction=1.0, smooth=1):
  """The DTP rule written plainly for one sample: first k with a strict local minimum at k−1."""
  s = [float(np.mean(d[max(0, k - smooth + 1):k + 1])) for k in range(len(d))]
  for k in range(max(2, min_step), len(d)):
    if s[k - 2] > s[k - 1] < s[k] and s[k - 1] <= peak_fraction * max(s[:k]):
      return k
  return -1


# --- the guided prediction and the one-pass batching ----------------------------------------------


def test_guide_endpoints_and_per_sample_w():
  eps_c = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2, 1)), jnp.float32)
  eps_u = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 2, 1)), jnp.float32)
  np.testing.assert_allclose(guidance.guide(eps_c, eps_u, jnp.ones(3)), eps_c, atol=1e-6)
  np.testing.assert_allclose(guidance.guide(eps_c, eps_u, jnp.zeros(3)), eps_u, atol=1e-6)
  # per sample: w = (0, 1, 7.5) → ε_u, ε_c, ε_u + 7.5 (ε_c − ε_u)
  out = guidance.guide(eps_c, eps_u, jnp.asarray([0.0, 1.0, 7.5]))
  np.testing.assert_allclose(out[0], eps_u[0], atol=1e-6)
  np.testing.assert_allclose(out[1], eps_c[1], atol=1e-6)
  np.testing.assert_allclose(out[2], eps_u[2] + 7.5 * (eps_c[2] - eps_u[2]), atol=1e-5)


def test_predict_branches_one_pass_equals_two_calls():
  calls = []

  def eps_fn(x, t, cond):  # depends non-linearly on a pytree condition
    calls.append(x.shape[0])
    scale = jnp.tanh(cond["label"].astype(jnp.float32) + cond["extra"][:, 0])
    return jnp.sin(x) * scale[:, None, None, None] + t[:, None, None, None] / 1000.0

  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2, 1)), jnp.float32)
  t = jnp.asarray([10, 500, 999], jnp.int32)
  cond = {"label": jnp.asarray([0, 3, 7]), "extra": jnp.ones((3, 2))}
  null = {"label": jnp.full((3,), 10), "extra": jnp.zeros((3, 2))}
  eps_c, eps_u = guidance.predict_branches(eps_fn, x, t, cond, null)
  assert calls == [6]  # one 2B-sized forward pass
  np.testing.assert_allclose(eps_c, eps_fn(x, t, cond), atol=1e-6)
  np.testing.assert_allclose(eps_u, eps_fn(x, t, null), atol=1e-6)
  calls.clear()
  only_c, none_u = guidance.predict_branches(eps_fn, x, t, cond, null, use_uncond=False)
  assert none_u is None and calls == [3]  # one B-sized pass
  np.testing.assert_allclose(only_c, eps_c, atol=1e-6)
  with pytest.raises(ValueError):
    guidance.predict_branches(eps_fn, x, t, cond, null, use_cond=False, use_uncond=False)


@pytest.mark.parametrize("name, needs_cond, needs_uncond", [
    ("none", False, True), ("conditional", True, False), ("cfg", True, True),
    ("static", True, True), ("opposite", True, True), ("dynamic", True, True),
    ("interval", True, True), ("linear", True, True), ("cosine", True, True)])
def test_branch_needs(name, needs_cond, needs_uncond):
  s = registry.make_rule(name)
  assert (s.needs_cond, s.needs_uncond) == (needs_cond, needs_uncond)


def test_branch_needs_follow_weights():
  assert not registry.make_rule("cfg", w=1).needs_uncond  # w = 1 is the conditional model
  assert not registry.make_rule("cfg", w=0).needs_cond
  assert not registry.make_rule("static", w_pre=1, w_post=1).needs_uncond
  assert not registry.make_rule("interval", w=1).needs_uncond
  dyn = registry.make_rule("dynamic", w_pre=1, w_post=1)
  assert dyn.needs_uncond and dyn.needs_cond  # d_t needs both branches regardless of w


# --- static transition ----------------------------------------------------------------------------


@pytest.mark.parametrize("spacing, num_steps", [("uniform", 50), ("trailing", 50), ("linspace", 37),
                                                ("uniform", 7)])
@pytest.mark.parametrize("tau", [650, 500, 501, 0, 999])
def test_static_switches_exactly_at_tau(spacing, num_steps, tau):
  ts = samplers.time_grid(1000, num_steps, spacing)
  s = registry.make_rule("static", w_pre=-2.0, tau=tau, w_post=5.0)
  w, transition = run_strategy(s, ts, np.ones((len(ts), 2)))
  expected_w = np.where(ts <= tau, 5.0, -2.0)
  np.testing.assert_array_equal(w, np.stack([expected_w] * 2, axis=1))
  on = np.nonzero(ts <= tau)[0]
  expected_k = int(on[0]) if len(on) else -1
  np.testing.assert_array_equal(transition, [expected_k] * 2)


def test_static_known_grid_positions():
  # uniform 50 on T = 1000: t_k = 980 − 20k; τ = 505 is off the grid → first t ≤ 505 is 500, k = 24
  ts = samplers.time_grid(1000, 50)
  _, transition = run_strategy(registry.make_rule("static", tau=505), ts, np.ones((50, 1)))
  assert ts[24] == 500 and transition[0] == 24
  # trailing 50: t_k = 999 − 20k; τ = 0 never reached (last t = 19) → never switches
  ts = samplers.time_grid(1000, 50, "trailing")
  w, transition = run_strategy(registry.make_rule("static", tau=0), ts, np.ones((50, 1)))
  assert transition[0] == -1 and np.all(w == 0.0)


def test_opposite_defaults():
  s = registry.make_rule("opposite")
  assert (s.w_pre, s.tau, s.w_post) == (-2.0, 650, 7.5)
  assert registry.make_rule("opposite", s=3, tau="600").w_pre == -3.0


# --- dynamic transition ---------------------------------------------------------------------------


def test_dynamic_hand_made_sequences():
  # columns are samples; each has its own transition
  d = np.array([
      # no-min  plateau  min@1  min@3  falling
      [1.0, 3.0, 5.0, 5.0, 9.0],
      [2.0, 2.0, 1.0, 4.0, 8.0],
      [3.0, 2.0, 2.0, 3.0, 7.0],  # plateau 2, 2: equal values are not a strict minimum
      [4.0, 3.0, 3.0, 1.0, 6.0],
      [5.0, 4.0, 0.5, 2.0, 5.0],  # after firing, column 2 falls again: latched, stays on
      [6.0, 5.0, 9.0, 0.1, 4.0],  # column 3's later minimum (0.1 at k = 5) does not move it
      [7.0, 6.0, 0.1, 5.0, 3.0],
  ])
  s = registry.make_rule("dynamic", w_pre=1.0, w_post=7.5)
  w, transition = run_strategy(s, np.arange(7)[::-1] * 100, d)
  np.testing.assert_array_equal(transition, [-1, -1, 2, 4, -1])
  for b, k in enumerate(transition):
    expected = np.where((k >= 0) & (np.arange(7) >= k), 7.5, 1.0)  # w_post from step k itself
    np.testing.assert_array_equal(w[:, b], expected)
    assert k == dynamic_reference(d[:, b])


def test_dynamic_plateau_then_strict_min():
  # 3, 2, 2, 1, 2 → the strict minimum is at k−1 = 3 (the plateau at 2, 2 does not count) → k = 4
  _, transition = run_strategy(registry.make_rule("dynamic"), np.arange(5)[::-1],
                               [3.0, 2.0, 2.0, 1.0, 2.0])
  assert transition[0] == 4


def test_dynamic_guards():
  ts = np.arange(8)[::-1] * 100
  # min_step: minimum at 1 (fires k = 2) ignored; the next, at 3, fires k = 4
  d = [5.0, 1.0, 2.0, 1.0, 3.0, 4.0, 5.0, 6.0]
  assert run_strategy(registry.make_rule("dynamic"), ts, d)[1][0] == 2
  assert run_strategy(registry.make_rule("dynamic", min_step=3), ts, d)[1][0] == 4
  assert run_strategy(registry.make_rule("dynamic", min_step=5), ts, d)[1][0] == -1
  # peak_fraction 0.5: the wiggle 1.0 → 0.9 (0.9 > 0.5·1.0) is ignored; the fall 4 → 1.5 ≤ 0.5·4
  # fires at k = 6
  d = [1.0, 0.9, 1.0, 2.0, 4.0, 1.5, 1.8, 2.0]
  assert run_strategy(registry.make_rule("dynamic"), ts, d)[1][0] == 2
  assert run_strategy(registry.make_rule("dynamic", peak_fraction=0.5), ts, d)[1][0] == 6
  assert run_strategy(registry.make_rule("dynamic", peak_fraction=0.3), ts, d)[1][0] == -1
  # smooth 2: trailing means 4, 3, 2.5, 2, 1.5, 2.5, 3.5, 4.5 → single minimum at 4 → k = 5
  d = [4.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0, 5.0]
  assert run_strategy(registry.make_rule("dynamic"), ts, d)[1][0] == 2
  assert run_strategy(registry.make_rule("dynamic", smooth=2), ts, d)[1][0] == 5


def test_dynamic_measure_x0_and_opposite():
  ts = np.arange(5)[::-1] * 100
  d_eps = [1.0, 2.0, 3.0, 4.0, 5.0]  # rising, as on a Bayes-optimal model (docs/science.md §6)
  d_x0 = [9.0, 4.0, 2.0, 3.0, 1.0]  # falls, minimum at 2 → fires at k = 3
  w, tr = run_strategy(registry.make_rule("dynamic"), ts, d_eps, d_x0)
  assert tr[0] == -1 and np.all(w == 1.0)
  s = registry.make_rule("dynamic_opposite", measure="x0")
  assert (s.w_pre, s.w_post) == (-7.5, 7.5)
  w, tr = run_strategy(s, ts, d_eps, d_x0)
  assert tr[0] == 3
  np.testing.assert_array_equal(w[:, 0], [-7.5, -7.5, -7.5, 7.5, 7.5])


@hypothesis.settings(max_examples=20, deadline=None, derandomize=True)
@hypothesis.given(
    d=st.lists(st.lists(st.integers(0, 4), min_size=3, max_size=3), min_size=3, max_size=10),
    min_step=st.integers(2, 5), peak_fraction=st.sampled_from([1.0, 0.5, 0.25]),
    smooth=st.sampled_from([1, 2, 4]))
def test_dynamic_property_latched_and_matches_reference(d, min_step, peak_fraction, smooth):
  d = np.asarray(d, np.float32)  # [S, 3]; small integers make plateaus common
  s = guidance.DynamicTransition(w_pre=-2.0, w_post=3.0, min_step=min_step,
                                 peak_fraction=peak_fraction, smooth=smooth)
  w, transition = run_strategy(s, np.arange(len(d))[::-1], d)
  assert np.all(np.isfinite(w)) and set(np.unique(w)) <= {-2.0, 3.0}
  for b in range(d.shape[1]):
    k = dynamic_reference(d[:, b], min_step=min_step, peak_fraction=peak_fraction, smooth=smooth)
    assert transition[b] == k
    on = w[:, b] == 3.0
    assert np.all(on == ((k >= 0) & (np.arange(len(d)) >= k)))  # switched once, never back


# --- peers ----------------------------------------------------------------------------------------


def test_interval_uses_sigma_boundaries():
  alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
  sigma = np.sqrt((1.0 - alpha_bar) / alpha_bar)  # σ_t = √((1−ᾱ)/ᾱ), increasing in t
  t_lo = int(np.argmax(sigma > 0.28))  # first t inside (0.28, 1.61]
  t_hi = int(np.nonzero(sigma <= 1.61)[0][-1])  # last t inside
  ts = np.array([999, t_hi + 1, t_hi, (t_lo + t_hi) // 2, t_lo, t_lo - 1, 0])
  w, transition = run_strategy(registry.make_rule("interval", w=4.0), ts, np.ones((7, 1)))
  np.testing.assert_array_equal(w[:, 0], [1.0, 1.0, 4.0, 4.0, 4.0, 1.0, 1.0])
  assert transition[0] == -1


def test_increasing_schedules_at_known_t():
  schedule = linear_schedule(21)
  ts = np.array([20, 15, 10, 5, 0])  # u = 1 − t/20 = 0, .25, .5, .75, 1
  w, _ = run_strategy(registry.make_rule("linear", w_min=1.0, w_max=9.0), ts, np.ones((5, 1)),
                      schedule=schedule)
  np.testing.assert_allclose(w[:, 0], [1.0, 3.0, 5.0, 7.0, 9.0], atol=1e-5)
  w, _ = run_strategy(registry.make_rule("cosine", w_min=1.0, w_max=9.0), ts, np.ones((5, 1)),
                      schedule=schedule)
  c = (1.0 - math.cos(0.75 * math.pi)) / 2  # (1 − cos πu)/2 at u = .75 ≈ 0.8536
  np.testing.assert_allclose(w[:, 0], [1.0, 1.0 + 8 * (1 - c), 5.0, 1.0 + 8 * c, 9.0], atol=1e-5)


# --- construction and validation ------------------------------------------------------------------


def test_names_and_defaults():
  assert GUIDANCE_NAMES == ("none", "conditional", "cfg", "static", "opposite", "dynamic",
                                     "dynamic_opposite", "interval", "linear", "cosine")
  assert registry.rule_params("none") == {}
  assert registry.rule_params("cfg") == {"w": 7.5}
  assert registry.rule_params("static") == {"w_pre": 0.0, "tau": 500, "w_post": 7.5}
  assert registry.rule_params("opposite") == {"s": 2.0, "tau": 650, "w_post": 7.5}
  assert registry.rule_params("dynamic") == {"w_pre": 1.0, "w_post": 7.5, "measure": "eps",
                                                 "min_step": 2, "peak_fraction": 1.0, "smooth": 1}
  assert registry.rule_params("dynamic_opposite")["s"] == 7.5
  assert registry.rule_params("interval") == {"w": 7.5, "sigma_lo": 0.28, "sigma_hi": 1.61}
  assert registry.rule_params("cosine") == {"w_min": 0.0, "w_max": 15.0}
  for name in GUIDANCE_NAMES:
    registry.make_rule(name).validate(1000)


def test_overrides_from_strings():
  s = registry.make_rule("static", w_pre="0", tau="600", w_post="3")
  assert s == guidance.StaticTransition(w_pre=0.0, tau=600, w_post=3.0) and isinstance(s.tau, int)
  assert registry.make_rule("dynamic", measure="x0", peak_fraction="0.5").peak_fraction == 0.5


@pytest.mark.parametrize("name, overrides", [
    ("nope", {}), ("none", {"w": 3.0}), ("cfg", {"tau": 3}), ("opposite", {"s": -2.0}),
    ("opposite", {"w_pre": -2.0}), ("dynamic_opposite", {"s": 0}), ("static", {"tau": -1}),
    ("static", {"tau": "6.5"}), ("dynamic", {"measure": "l1"}), ("dynamic", {"min_step": 1}),
    ("dynamic", {"peak_fraction": 0.0}), ("dynamic", {"smooth": 0}), ("cfg", {"w": math.nan}),
    ("interval", {"sigma_lo": 2.0}), ("linear", {"shape": "cosine"}), ("cfg", {"w": "abc"})])
def test_bad_strategies_raise(name, overrides):
  with pytest.raises(ValueError):
    registry.make_rule(name, **overrides)


def test_validate_needs_T():
  with pytest.raises(ValueError, match=r"\[0, 1000\)"):
    registry.make_rule("static", tau=1000).validate(1000)
  registry.make_rule("static", tau=999).validate(1000)
  with pytest.raises(ValueError, match="choose one of"):
    registry.make_rule("cfgg")


def test_weight_is_jittable_in_a_scan():
  s = registry.make_rule("dynamic", smooth=2)
  d = jnp.asarray([[3.0], [2.0], [1.0], [2.0], [3.0], [4.0]])  # means of 2: 3, 2.5, 1.5, 1.5, 2.5

  @jax.jit
  def run(d):
    def body(state, xs):
      k, d_k = xs
      w, state = s.weight(state, k, jnp.int32(0), d_k, d_k, schedule=SCHEDULE)
      return state, w
    state, w = jax.lax.scan(body, s.init_state(1), (jnp.arange(6), d))
    return w, state.transition_step

  w, transition = run(d)
  # the plateau 1.5, 1.5 is not strict, so no transition; raw d would fire at k = 3
  assert int(transition[0]) == -1 and np.all(np.asarray(w) == 1.0)
  assert run_strategy(registry.make_rule("dynamic"), np.zeros(6), np.asarray(d))[1][0] == 3


# --- properties over random strategies, grids and d_t sequences -----------------------------------
# Eager per-step calls with a fixed batch of 3: every jnp op compiles once, not once per example.

_B = 3
_SCHEDULES = {100: linear_schedule(100), 1000: SCHEDULE}
_FLOAT = st.floats(-20, 20)
_D = st.floats(allow_nan=True, allow_infinity=True, width=32)  # what a broken model could give
_PARAMS = {
    "none": {}, "conditional": {}, "cfg": {"w": _FLOAT},
    "static": {"w_pre": _FLOAT, "tau": st.integers(0, 99), "w_post": _FLOAT},
    "opposite": {"s": st.floats(0.01, 20), "tau": st.integers(0, 99), "w_post": _FLOAT},
    "dynamic": {"w_pre": _FLOAT, "w_post": _FLOAT, "measure": st.sampled_from(guidance.MEASURES),
                "min_step": st.integers(2, 6), "peak_fraction": st.floats(0.1, 1.0),
                "smooth": st.integers(1, 3)},
    "dynamic_opposite": {"s": st.floats(0.01, 20), "w_post": _FLOAT},
    "interval": {"w": _FLOAT, "sigma_lo": st.floats(0.0, 2.0)},
    "linear": {"w_min": _FLOAT, "w_max": _FLOAT}, "cosine": {"w_min": _FLOAT, "w_max": _FLOAT},
}


@st.composite
def _strategies(draw):
  name = draw(st.sampled_from(GUIDANCE_NAMES))
  params = {k: draw(v) for k, v in _PARAMS[name].items()}
  if name == "interval":
    params["sigma_hi"] = params["sigma_lo"] + draw(st.floats(0.01, 5.0))
  return name, registry.make_rule(name, **params)


def _trace(strategy, ts, d_eps, d_x0, schedule):
  """w [S, B] and transition_step [S, B] after every step (run_strategy keeps only the last)."""
  state = strategy.init_state(_B)
  ws, transitions = [], []
  for k, t in enumerate(ts):
    w, state = strategy.weight(state, k, jnp.int32(t), jnp.asarray(d_eps[k]), jnp.asarray(d_x0[k]),
                               schedule=schedule)
    ws.append(np.asarray(w))
    transitions.append(np.asarray(state.transition_step))
  return np.stack(ws), np.stack(transitions)


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(strategy=_strategies(), T=st.sampled_from(sorted(_SCHEDULES)),
                  spacing=st.sampled_from(samplers.SPACINGS), data=st.data())
def test_property_w_finite_transitions_latched_schedules_as_promised(  # noqa: N803
    strategy, T, spacing, data):
  name, s = strategy
  s.validate(T)
  num_steps = data.draw(st.integers(1, 20), label="num_steps")
  ts = samplers.time_grid(T, num_steps, spacing)
  d_eps, d_x0 = (np.asarray(data.draw(st.lists(st.lists(_D, min_size=_B, max_size=_B),
                                                min_size=num_steps, max_size=num_steps), label=m),
                            np.float32) for m in ("d_eps", "d_x0"))
  w, tr = _trace(s, ts, d_eps, d_x0, _SCHEDULES[T])
  k = np.arange(num_steps)[:, None]
  assert w.shape == (num_steps, _B) and np.isfinite(w).all()  # even when d is NaN or ±inf
  # Transitions: −1 until one fires (at the current step k), then latched for good.
  assert ((tr == -1) | ((tr >= 0) & (tr <= k))).all()
  fired_before = tr[:-1] >= 0
  assert (tr[1:][fired_before] == tr[:-1][fired_before]).all()
  assert ((tr[1:] == tr[:-1]) | (tr[1:] == k[1:])).all()  # a new value is always the current step
  final = tr[-1]
  if isinstance(s, (guidance.StaticTransition, guidance.DynamicTransition)):
    on = (final >= 0) & (k >= final)  # w_post from the transition step on, w_pre before
    np.testing.assert_array_equal(w, np.where(on, np.float32(s.w_post), np.float32(s.w_pre)))
  if isinstance(s, guidance.StaticTransition):
    first = np.flatnonzero(ts <= s.tau)
    assert (final == (first[0] if len(first) else -1)).all()  # the same step for every sample
  elif isinstance(s, guidance.IncreasingSchedule):
    lo, hi = min(s.w_min, s.w_max), max(s.w_min, s.w_max)
    assert (w >= lo - 1e-4).all() and (w <= hi + 1e-4).all() and (final == -1).all()
    steps = np.diff(w, axis=0) * np.sign(s.w_max - s.w_min)  # t falls along k: w moves to w_max
    assert (steps >= -1e-4 * max(1.0, hi - lo)).all()
  elif not isinstance(s, guidance.DynamicTransition):
    assert set(np.unique(w)) <= {np.float32(v) for v in s.levels()} and (final == -1).all()
