"""The guidance-rule interface and its registry (minidiff.core.rule, minidiff.core.registry): every
registered rule runs in the one sampling loop under every stepper; the jitted loop equals the
step-by-step reference for rules that act on ε̂ or prepare the conditions; a rule file registers
itself; the example rule's closed forms."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.core import guidance, mitigations, registry, rule, samplers, specs
from minidiff.core.rules import rescaled_cfg
from minidiff.core.schedule import linear_schedule

SCHEDULE = linear_schedule(1000)  # the defaults (τ = 500, 650) lie on it
B, SHAPE, D = 3, (2, 2, 1), 4
IMAGES = np.random.default_rng(0).uniform(-1, 1, (5,) + SHAPE).astype(np.float32)


def _eps_fn(x_t, t, cond):
  """A smooth toy denoiser of an embedding condition {"embedding": [B, D]} (closed form)."""
  e = cond["embedding"]
  bias = jnp.tanh(e[:, :1] + 0.1 * e[:, 1:2]).reshape((-1,) + (1,) * (x_t.ndim - 1))
  return 0.6 * jnp.tanh(x_t) + bias * (1.0 + t.reshape(bias.shape) / 100.0)


def _embed_fn(labels):
  return {"embedding": jnp.stack([labels.astype(jnp.float32) * 0.5 + k for k in range(D)], -1)}


def _inputs(rule_obj):
  x_T = jnp.asarray(np.random.default_rng(1).standard_normal((B,) + SHAPE), jnp.float32)  # noqa: N806
  labels = jnp.asarray([0, 1, 2], jnp.int32)
  null = jnp.full((B,), 3, jnp.int32)
  if rule_obj.needs_row_keys:
    keys = jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(
        jnp.arange(B)))
    return x_T, {"cond": labels, "row_key": keys}, {"cond": null, "row_key": jnp.zeros_like(keys)}
  if rule_obj.needs_embedding:
    return x_T, labels, null
  return x_T, _embed_fn(labels), _embed_fn(null)


def _built(name):
  r = registry.make_rule(name)
  if name == "two_pass":
    r = dataclasses.replace(r, fallback_step=1)  # a grid of 4 steps
  return r.with_images(IMAGES) if r.needs_images else r


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
@pytest.mark.parametrize("name", registry.RULE_NAMES)
def test_every_rule_runs_under_every_stepper(name, sampler):
  r = _built(name)
  x_T, cond, null = _inputs(r)  # noqa: N806
  x0, diag = samplers.sample(_eps_fn, SCHEDULE, x_T, cond, null, jax.random.key(0), strategy=r,
                             sampler=sampler, num_steps=4, eta=0.5, embed_fn=_embed_fn)
  assert x0.shape == x_T.shape and np.isfinite(np.asarray(x0)).all()
  assert diag.w.shape == (4, B) and diag.transition_step.shape == (B,)
  assert diag.transition_step.dtype == jnp.int32
  assert np.all(np.asarray(diag.transition_step) >= -1)


@pytest.mark.parametrize("name", ["amg", "cads", "wen", "two_pass", "rescaled_cfg"])
def test_the_jitted_loop_equals_the_step_by_step_reference(name):
  r = _built(name)
  if name == "amg":
    r = dataclasses.replace(r, threshold=0.0, c_sim=2.0)  # triggered: every term acts
  x_T, cond, null = _inputs(r)  # noqa: N806
  kw = dict(strategy=r, sampler="ddpm", num_steps=4, embed_fn=_embed_fn)
  run = jax.jit(lambda x: samplers.sample(_eps_fn, SCHEDULE, x, cond, null, jax.random.key(0), **kw))
  x0, diag = run(x_T)
  ref, ref_diag = samplers.sample_reference(_eps_fn, SCHEDULE, x_T, cond, null, jax.random.key(0),
                                            jit_step=False, **kw)
  np.testing.assert_allclose(np.asarray(x0), np.asarray(ref), atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(diag.transition_step),
                                np.asarray(ref_diag.transition_step))
  np.testing.assert_allclose(np.asarray(diag.w), np.asarray(ref_diag.w), rtol=1e-5, atol=1e-6)


def test_amg_without_a_trigger_is_cfg_with_any_stepper():
  # λ above every similarity: no sample triggered, so ε̂ is CFG's (bit for bit, same loop).
  amg = mitigations.AntiMemorization(w=3.0, threshold=0.999).with_images(IMAGES)
  x_T, cond, null = _inputs(guidance.Constant(3.0))  # noqa: N806
  for sampler in ("dpmpp_2m", "ddpm"):
    run = lambda r: samplers.sample(_eps_fn, SCHEDULE, x_T, cond, null, jax.random.key(0),  # noqa: E731
                                    strategy=r, sampler=sampler, num_steps=5)
    (a, da), (c, _) = run(amg), run(guidance.Constant(3.0))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert np.all(np.asarray(da.transition_step) == -1)


def test_rescaled_cfg_closed_forms():
  x_T, cond, null = _inputs(guidance.Constant(3.0))  # noqa: N806
  run = lambda r: samplers.sample(_eps_fn, SCHEDULE, x_T, cond, null, jax.random.key(0),  # noqa: E731
                                  strategy=r, num_steps=4)[0]
  # φ = 0 is plain CFG; φ = 1 with w = 1 is the conditional model (std(ε̂) = std(ε_c) already)
  np.testing.assert_allclose(run(rescaled_cfg.RescaledCFG(w=3.0, phi=0.0)),
                             run(guidance.Constant(3.0)), atol=1e-6)
  np.testing.assert_allclose(run(rescaled_cfg.RescaledCFG(w=1.0, phi=1.0)),
                             run(guidance.Constant(1.0)), atol=1e-5)
  # one step by hand: ε̂ = φ ε_cfg std(ε_c)/std(ε_cfg) + (1 − φ) ε_cfg
  rng = np.random.default_rng(2)
  e_c, e_u = (jnp.asarray(rng.standard_normal((B,) + SHAPE), jnp.float32) for _ in range(2))
  s = rule.StepSignals(k=jnp.int32(0), t=jnp.int32(50), x_t=e_c, eps_c=e_c, eps_u=e_u,
                       d_eps=jnp.zeros(B), d_x0=jnp.zeros(B))
  eps, w, _ = rescaled_cfg.RescaledCFG(w=4.0, phi=0.5).predict(
      s, rule.no_transition(B), schedule=SCHEDULE, branches=None, clip_x0=True)
  cfg = np.asarray(e_u) + 4.0 * (np.asarray(e_c) - np.asarray(e_u))
  ratio = np.asarray(e_c).reshape(B, -1).std(1) / cfg.reshape(B, -1).std(1)
  expect = 0.5 * cfg * ratio[:, None, None, None] + 0.5 * cfg
  np.testing.assert_allclose(np.asarray(eps), expect, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(w), [4.0] * B)


def test_registry_reads_each_rule_class():
  for name in registry.RULE_NAMES:
    cls = registry.RULES[name]
    assert cls.name == name and registry.family_of(name) and registry.help_of(name)
    registry.make_rule(name).validate(1000)  # the defaults are valid
  assert registry.rule_params("rescaled_cfg") == {"w": 7.5, "phi": 0.7}
  assert registry.rule_params("opposite") == {"tau": 650, "w_post": 7.5, "s": 2.0}  # w_pre = −s
  assert "images" not in registry.rule_params("amg")  # data, not a spec parameter
  [arm] = specs.parse_guidance("rescaled_cfg:phi=0.5", T=1000)
  assert arm.strategy == rescaled_cfg.RescaledCFG(phi=0.5)
  with pytest.raises(ValueError, match="phi must lie in"):
    registry.make_rule("rescaled_cfg", phi="2")
  with pytest.raises(ValueError, match="has no parameter"):
    registry.make_rule("none", w=3)


def test_a_rule_class_registers_itself_and_names_are_unique():
  @dataclasses.dataclass(frozen=True)
  class _Half(guidance.Strategy):
    name = "test_half_w"
    family = "cfg"
    help = "w = 0.5"

    def levels(self):
      return (0.5,)

    def weight(self, state, k, t, d_eps, d_x0, *, schedule):
      return jnp.full(d_eps.shape, 0.5), state

  assert rule.registered()["test_half_w"] is _Half
  with pytest.raises(ValueError, match="Two guidance rules are named 'cfg'"):
    type("Other", (guidance.Constant,), {"name": "cfg", "family": "cfg", "help": "x"})
  with pytest.raises(ValueError, match="must declare `family` and `help`"):
    type("Bare", (guidance.Constant,), {"name": "test_bare"})


def test_rules_that_need_inputs_say_what_is_missing():
  x_T, cond, null = _inputs(guidance.Constant(3.0))  # noqa: N806
  with pytest.raises(ValueError, match="with_images"):
    samplers.sample(_eps_fn, SCHEDULE, x_T, cond, null, jax.random.key(0),
                    strategy=registry.make_rule("amg"), num_steps=3)
  with pytest.raises(ValueError, match="embed_fn"):
    samplers.sample(_eps_fn, SCHEDULE, x_T, jnp.zeros(B, jnp.int32), jnp.zeros(B, jnp.int32),
                    jax.random.key(0), strategy=registry.make_rule("wen"), num_steps=3)
  with pytest.raises(ValueError, match="≥ 2 training images"):
    registry.make_rule("amg").with_images(IMAGES[:1])
