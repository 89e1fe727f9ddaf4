"""Study arms: one guidance strategy (and, for text, a prompt perturbation) per row, and running
them on shared noises — arms that share their start (static transitions differing only in τ) are
sampled from one shared prefix.

An arm's family groups it on the memorization–alignment frontier: "cfg" (constant w: none,
conditional and cfg), "static", "opposite", "dynamic", "dynamic_opposite", "interval", "ramp"
(linear / cosine), the peers' mitigations "wen", "amg" and "cads" (`run_mitigation`), and for
text the perturbation's name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from minidiff.core import anti_memorization, guidance, mitigations, samplers, specs as specs_lib
from minidiff.study import sampling
from minidiff.study.conditions import ConditionSet
from minidiff.train import state as state_lib

log = logging.getLogger(__name__)

FAMILY_OF_STRATEGY = {"none": "cfg", "conditional": "cfg", "cfg": "cfg", "static": "static",
                      "opposite": "opposite", "dynamic": "dynamic",
                      "peak_drop": "dynamic", "peak_passed": "dynamic",  # per-sample rules
                      "dynamic_opposite": "dynamic_opposite", "interval": "interval",
                      "linear": "ramp", "cosine": "ramp",
                      **{name: name for name in guidance.MITIGATION_NAMES}}


@dataclasses.dataclass(frozen=True)
class Arm:
  """One row of a study: a guidance strategy, an optional prompt perturbation, its family."""

  label: str  # as written after sweep expansion, e.g. "static:tau=400" or "cfg+random_tokens:k=4"
  family: str
  strategy: guidance.Strategy | mitigations.Mitigation
  perturbation: specs_lib.Perturbation | None = None

  @property
  def slug(self) -> str:
    """A file-name-safe form of the label."""
    return specs_lib.slug(self.label)


def parse_arms(text: str | Sequence[str], *, T: int, overrides: dict[str, str] | None = None,  # noqa: N803
               text_conditions: bool = False) -> list[Arm]:
  """Expands sweep specs (`cfg:w=1,3,7.5`, `static:tau=200:800:100`) into arms, validated.

  Raises ValueError before anything is compiled: unknown strategies, parameters, τ outside
  [0, T), a perturbation on a class-conditional study, repeated arms.
  """
  arms = []
  for spec in specs_lib.parse_specs(text, T=T, overrides=overrides):
    base, _, pert = spec.label.partition("+")
    if spec.perturbation is not None and not text_conditions:
      raise ValueError(f"Arm {spec.label!r} perturbs prompts, but this run is class-conditional; "
                       f"drop its '+{pert}' part.")
    family = pert.split(":", 1)[0] if pert else FAMILY_OF_STRATEGY[base.split(":", 1)[0]]
    arms.append(Arm(spec.label, family, spec.strategy, spec.perturbation))
  return arms


@dataclasses.dataclass(frozen=True)
class SamplerRun:
  """What every arm of a study shares: the model, the sampler options, the mesh."""

  eps_apply: Callable
  params: Any
  schedule: Any
  options: sampling.SamplingOptions
  mesh: Mesh
  # The peers' mitigations only: `(params, cond) -> embedding dict` (`embedding_apply`; wen, cads)
  # and the de-duplicated training images [U, H, W, C] (amg searches them while sampling).
  embed_apply: Callable | None = None
  train_images: np.ndarray | None = None


def mitigation_inputs(arms: Sequence[Arm], config: Any, unique_images: np.ndarray) -> dict[str, Any]:
  """The SamplerRun fields the peers' mitigations need (`embed_apply`, `train_images`), or {} when
  no arm is one."""
  if not any(isinstance(a.strategy, tuple(mitigations.MITIGATIONS.values())) for a in arms):
    return {}
  return dict(embed_apply=embedding_apply(config), train_images=np.asarray(unique_images))


def embedding_apply(config: Any) -> Callable:
  """`(params, cond) -> UNet.embed_condition(cond)` for the model of `config` (its graph only)."""
  graphdef, _ = state_lib.init_params(config)
  return lambda params, cond: nnx.merge(graphdef, params).embed_condition(cond)


def run_arm(run: SamplerRun, arm: Arm, conditions: ConditionSet, x_T: np.ndarray,  # noqa: N803
            key: jax.Array, *, compiled_cache: dict | None = None) -> sampling.SampleResult:
  """Samples every row of `conditions` from its x_T with one arm (one compile per strategy and
  condition structure: arms that differ only in their prompts share it through `compiled_cache`)."""
  if isinstance(arm.strategy, tuple(mitigations.MITIGATIONS.values())):
    return run_mitigation(run, arm, conditions, x_T, key, compiled_cache=compiled_cache)
  o = run.options
  sampler = samplers.make_sampler(
      run.eps_apply, schedule=run.schedule, strategy=arm.strategy, sampler=o.sampler,
      num_steps=o.num_steps, eta=o.eta, spacing=o.spacing, clip_x0=o.clip_x0,
      x0_steps=o.x0_steps, compute_d=False)
  cache_key = (repr(arm.strategy), str(jax.tree.structure(conditions.cond)))

  def compiled_for(*example):
    if compiled_cache is not None and cache_key in compiled_cache:
      return compiled_cache[cache_key]
    compiled = sampler.lower(*example).compile()
    if compiled_cache is not None:
      compiled_cache[cache_key] = compiled
    return compiled

  (out,), compile_s, sample_s = sampling.sample_in_batches(
      compiled_for, run.params, x_T, conditions.cond, conditions.null, key, batch=o.batch,
      mesh=run.mesh, desc=arm.label, steps_per_batch=o.num_steps)
  result = sampling.to_result(out, conditions.requested_class, compile_s, sample_s)
  sampling.check_finite(result, arm.label)
  return result


def switch_families(arms: Sequence[Arm], *, x0_steps: Sequence[int] = ()) -> list[list[Arm]]:
  """Groups arms that can share their start: static transitions (delayed CFG, opposite guidance)
  with the same w_pre, w_post and perturbation, differing in τ. Every other arm is its own group.
  With recorded x̂₀ steps nothing is shared (the shared prefix keeps no x̂₀)."""
  groups: dict[Any, list[Arm]] = {}
  for arm in arms:
    s = arm.strategy
    if isinstance(s, guidance.StaticTransition) and not x0_steps:
      key = ("switch", s.w_pre, s.w_post, repr(arm.perturbation))
    else:
      key = ("alone", arm.label)
    groups.setdefault(key, []).append(arm)
  return list(groups.values())


def run_switch_family(run: SamplerRun, family: Sequence[Arm], conditions: ConditionSet,
                      x_T: np.ndarray, key: jax.Array) -> dict[str, sampling.SampleResult]:  # noqa: N803
  """Samples static-transition arms that differ only in τ from one shared prefix
  (`samplers.sample_switch_family`); equals running each arm alone on the same noises and keys."""
  o = run.options
  first = family[0].strategy
  grid = samplers.time_grid(run.schedule.T, o.num_steps, o.spacing)
  steps = np.asarray([samplers.switch_step(grid, a.strategy.tau) for a in family], np.int32)

  def fn(params, x, cond, null, k):
    eps_fn = lambda x_t, t, c: run.eps_apply(params, x_t, t, c)  # noqa: E731
    return samplers.sample_switch_family(
        eps_fn, run.schedule, x, cond, null, k, w_pre=first.w_pre, w_post=first.w_post,
        switch_steps=jnp.asarray(steps), sampler=o.sampler, num_steps=o.num_steps, eta=o.eta,
        spacing=o.spacing, clip_x0=o.clip_x0)

  compiled_for = lambda *example: jax.jit(fn).lower(*example).compile()  # noqa: E731
  outs, compile_s, sample_s = sampling.sample_in_batches(
      compiled_for, run.params, x_T, conditions.cond, conditions.null, key, batch=o.batch,
      mesh=run.mesh, num_arms=len(family), desc=f"{family[0].label} … {family[-1].label}",
      steps_per_batch=int(steps.max() + (len(grid) - steps).sum()))  # the prefix, then each arm
  results = {}
  for arm, out in zip(family, outs):
    # The shared cost is split evenly: per-arm samples/s then add up to the family's wall time.
    results[arm.label] = sampling.to_result(out, conditions.requested_class,
                                            compile_s / len(family), sample_s / len(family))
    sampling.check_finite(results[arm.label], arm.label)
  return results


def _mitigation_fn(run: SamplerRun, m: mitigations.Mitigation) -> Callable:
  """The jitted-to-be `(params, x_T, cond, null, key) -> (x₀, Diagnostics)` of a mitigation arm.

  wen and cads turn the condition into its continuous embedding (`run.embed_apply`) inside the
  call, so the optimisation and the annealing are timed with the sampling.
  """
  o = run.options
  kw = dict(sampler=o.sampler, num_steps=o.num_steps, eta=o.eta, spacing=o.spacing,
            clip_x0=o.clip_x0)
  cfg = guidance.Constant(w=m.w)
  if isinstance(m, mitigations.AntiMemorization):
    if run.train_images is None:
      raise ValueError("amg needs the de-duplicated training images (SamplerRun.train_images).")
    if o.x0_steps:
      raise ValueError("amg records no x̂₀ snapshots; drop --x0_steps for a study with amg arms.")
    train = np.asarray(run.train_images, np.float32)

    def amg_fn(params, x, cond, null, key):
      eps_fn = lambda x_t, t, c: run.eps_apply(params, x_t, t, c)  # noqa: E731
      return anti_memorization.sample_amg(eps_fn, run.schedule, x, cond, null, key, amg=m,
                                          train_images=train, **kw)
    return amg_fn
  if run.embed_apply is None:
    raise ValueError(f"{type(m).__name__} needs the model's condition embedding "
                     f"(SamplerRun.embed_apply = arms.embedding_apply(config)).")
  kw["x0_steps"] = o.x0_steps
  T = run.schedule.T  # noqa: N806

  if isinstance(m, mitigations.EmbeddingOptimisation):
    t0 = int(samplers.time_grid(T, o.num_steps, o.spacing)[0])

    def wen_fn(params, x, cond, null, key):
      eps_fn = lambda x_t, t, c: run.eps_apply(params, x_t, t, c)  # noqa: E731
      emb, emb_null = run.embed_apply(params, cond), run.embed_apply(params, null)
      t_first = jnp.full((x.shape[0],), t0, jnp.int32)
      eps_u = eps_fn(x, t_first, emb_null)  # the null branch does not move with the embedding

      def d_fn(e):  # the first step's d = ‖ε_c − ε_u‖₂ at x_T, per sample
        eps_c = eps_fn(x, t_first, {**emb, "embedding": e})
        return jnp.linalg.norm((eps_c - eps_u).reshape(x.shape[0], -1), axis=1)

      opt = mitigations.optimise_embedding(d_fn, emb["embedding"], target=m.target,
                                           steps=m.steps, lr=m.lr)
      return samplers.sample(eps_fn, run.schedule, x, {**emb, "embedding": opt.embedding},
                             emb_null, key, strategy=cfg, **kw)
    return wen_fn

  def cads_fn(params, x, cond, null, key):
    eps_fn = mitigations.annealed_eps_fn(
        lambda x_t, t, c: run.eps_apply(params, x_t, t, c), m, T)
    b = x.shape[0]
    emb = {**run.embed_apply(params, cond["cond"]), **mitigations.cads_fields(cond["cads_key"], 1, b)}
    emb_null = {**run.embed_apply(params, null["cond"]),
                **mitigations.cads_fields(null["cads_key"], 0, b)}
    return samplers.sample(eps_fn, run.schedule, x, emb, emb_null, key, strategy=cfg, **kw)
  return cads_fn


def run_mitigation(run: SamplerRun, arm: Arm, conditions: ConditionSet, x_T: np.ndarray,  # noqa: N803
                   key: jax.Array, *, compiled_cache: dict | None = None) -> sampling.SampleResult:
  """Samples every row of `conditions` with a peer mitigation (wen, amg, cads) on the shared noises
  and keys; samples/s counts everything the mitigation does (wen's optimisation included)."""
  m = arm.strategy
  fn = jax.jit(_mitigation_fn(run, m))
  cond, null = conditions.cond, conditions.null
  if isinstance(m, mitigations.ConditionAnnealing):
    # Row i's CADS noise comes from fold_in(fold_in(key, 7), i): the same draw in any batch split.
    row_key = jax.random.fold_in(key, 7)
    keys = np.asarray(jax.random.key_data(
        jax.vmap(lambda i: jax.random.fold_in(row_key, i))(jnp.arange(len(conditions)))))
    cond = {"cond": cond, "cads_key": keys}
    null = {"cond": null, "cads_key": np.zeros((1,) + keys.shape[1:], keys.dtype)}
  cache_key = ("mitigation", repr(m), str(jax.tree.structure(cond)))
  if isinstance(m, mitigations.AntiMemorization):  # its training images are compiled in
    cache_key += (hashlib.sha1(np.ascontiguousarray(run.train_images).tobytes()).hexdigest(),)

  def compiled_for(*example):
    if compiled_cache is not None and cache_key in compiled_cache:
      return compiled_cache[cache_key]
    compiled = fn.lower(*example).compile()
    if compiled_cache is not None:
      compiled_cache[cache_key] = compiled
    return compiled

  (out,), compile_s, sample_s = sampling.sample_in_batches(
      compiled_for, run.params, x_T, cond, null, key, batch=run.options.batch, mesh=run.mesh)
  result = sampling.to_result(out, conditions.requested_class, compile_s, sample_s)
  sampling.check_finite(result, arm.label)
  return result
