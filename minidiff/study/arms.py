"""Study arms: one guidance strategy (and, for text, a prompt perturbation) per row, and running
them on shared noises — arms that share their start (static transitions differing only in τ) are
sampled from one shared prefix.

An arm's family groups it on the memorization–alignment frontier: the family its rule declares
(minidiff.core.registry: "cfg" for none, conditional and cfg, "static", "opposite", "dynamic",
"dynamic_opposite", "interval", "ramp", the peers' "wen", "amg", "cads"), and for text the
perturbation's name. Every rule runs through the same sampler (`run_arm`); a rule that needs the
training images, the condition embedding or per-row keys declares it, and gets them here.
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

from minidiff.core import guidance, registry, rule as rule_lib, samplers, specs as specs_lib
from minidiff.study import sampling
from minidiff.study.conditions import ConditionSet
from minidiff.train import state as state_lib

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Arm:
  """One row of a study: a guidance strategy, an optional prompt perturbation, its family."""

  label: str  # as written after sweep expansion, e.g. "static:tau=400" or "cfg+random_tokens:k=4"
  family: str
  strategy: rule_lib.Rule
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
    family = pert.split(":", 1)[0] if pert else registry.family_of(base.split(":", 1)[0])
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
  # For the rules that declare they need them: `(params, cond) -> embedding dict`
  # (`embedding_apply`; wen, cads) and the de-duplicated training images [U, H, W, C] (amg).
  embed_apply: Callable | None = None
  train_images: np.ndarray | None = None


def mitigation_inputs(arms: Sequence[Arm], config: Any, unique_images: np.ndarray) -> dict[str, Any]:
  """The SamplerRun fields the arms' rules declare they need (`embed_apply`, `train_images`)."""
  out = {}
  if any(a.strategy.needs_embedding for a in arms):
    out["embed_apply"] = embedding_apply(config)
  if any(a.strategy.needs_images for a in arms):
    out["train_images"] = np.asarray(unique_images)
  return out


def embedding_apply(config: Any) -> Callable:
  """`(params, cond) -> UNet.embed_condition(cond)` for the model of `config` (its graph only)."""
  graphdef, _ = state_lib.init_params(config)
  return lambda params, cond: nnx.merge(graphdef, params).embed_condition(cond)


def _bound(run: SamplerRun, strategy: rule_lib.Rule) -> rule_lib.Rule:
  """The rule with what it declared it needs from the run (the training images)."""
  if strategy.needs_images:
    if run.train_images is None:
      raise ValueError(f"{strategy.name} needs the de-duplicated training images "
                       f"(SamplerRun.train_images).")
    return strategy.with_images(run.train_images)
  return strategy


def _with_row_keys(strategy: rule_lib.Rule, conditions: ConditionSet, key: jax.Array):
  """(cond, null) as the sampler gets them: with per-row keys for a rule that draws per-row noise.

  Row i's key is fold_in(fold_in(key, 7), i): the same draw in any batch split."""
  cond, null = conditions.cond, conditions.null
  if not strategy.needs_row_keys:
    return cond, null
  row_key = jax.random.fold_in(key, 7)
  keys = np.asarray(jax.random.key_data(
      jax.vmap(lambda i: jax.random.fold_in(row_key, i))(jnp.arange(len(conditions)))))
  return ({"cond": cond, "row_key": keys},
          {"cond": null, "row_key": np.zeros((1,) + keys.shape[1:], keys.dtype)})


def run_arm(run: SamplerRun, arm: Arm, conditions: ConditionSet, x_T: np.ndarray,  # noqa: N803
            key: jax.Array, *, compiled_cache: dict | None = None) -> sampling.SampleResult:
  """Samples every row of `conditions` from its x_T with one arm's rule (one compile per rule and
  condition structure: arms that differ only in their prompts share it through `compiled_cache`;
  samples/s counts everything the rule does, e.g. Wen's optimisation)."""
  o = run.options
  strategy = _bound(run, arm.strategy)
  if strategy.needs_embedding and run.embed_apply is None:
    raise ValueError(f"{strategy.name} needs the model's condition embedding "
                     f"(SamplerRun.embed_apply = arms.embedding_apply(config)).")
  sampler = samplers.make_sampler(
      run.eps_apply, schedule=run.schedule, strategy=strategy, sampler=o.sampler,
      num_steps=o.num_steps, eta=o.eta, spacing=o.spacing, clip_x0=o.clip_x0,
      x0_steps=o.x0_steps, compute_d=False,
      embed_apply=run.embed_apply if strategy.needs_embedding else None)
  cond, null = _with_row_keys(strategy, conditions, key)
  cache_key = (repr(strategy), str(jax.tree.structure(cond)))
  if strategy.needs_images:  # its training images are compiled in
    cache_key += (hashlib.sha1(np.ascontiguousarray(run.train_images).tobytes()).hexdigest(),)

  def compiled_for(*example):
    if compiled_cache is not None and cache_key in compiled_cache:
      return compiled_cache[cache_key]
    compiled = sampler.lower(*example).compile()
    if compiled_cache is not None:
      compiled_cache[cache_key] = compiled
    return compiled

  (out,), compile_s, sample_s = sampling.sample_in_batches(
      compiled_for, run.params, x_T, cond, null, key, batch=o.batch,
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
