"""The public Python API: load a trained run, sample it with any guidance, bring your own pieces.

  import minidiff                                    # before JAX: applies the CPU settings
  run = minidiff.load("runs/mnist_dup")             # the latest checkpoint's EMA model (step=N: another)
  out = run.sample("cfg:w=3", classes=[3, 7], num=20, seed=0)
  out.samples                                        # [20, 16, 16, 1] in [−1, 1]; out.d_eps, out.w …
  run.sample(lambda k, t, s: jnp.where(t > 600, 0.0, 5.0), classes=[0])   # a weight function
  run.sample("cfg", classes=[0], eps_fn=lambda x_t, t, c: 0.9 * run.eps_fn(x_t, t, c))
  sampler = minidiff.jitted_sampler(my_eps, schedule=run.schedule, strategy="static:tau=600")

`run.sample` draws the same initial noises and keys as `sample.py` for the same seed, number and
batch size, so its samples equal the study's for the same strategy and conditions. Samples are in
[−1, 1], shape [N, H, W, C]; the per-step record (t, d_eps, d_x0, w, transition step) comes with them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from minidiff import config as config_lib
from minidiff.core import samplers, specs
from minidiff.core.rule import Rule
from minidiff.core.schedule import NoiseSchedule, make_schedule
from minidiff.core.weight_fn import WeightFn, weight_schedule
from minidiff.data import tokenizer as tokenizer_lib
from minidiff.study import sampling
from minidiff.train import sharding

EpsFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
StrategyLike = str | Rule | WeightFn


def as_strategy(strategy: StrategyLike, *, T: int) -> tuple[str, Rule]:  # noqa: N803
  """(label, rule) from a spec string ("static:tau=600:w_post=3", one arm), a guidance rule
  (minidiff.core.rule.Rule), or a weight function (k, t, signals) -> w (`minidiff.core.weight_fn`)."""
  if isinstance(strategy, Rule):
    strategy.validate(T)
    return type(strategy).__name__, strategy
  if isinstance(strategy, str):
    parsed = specs.parse_guidance(strategy, T=T)
    if len(parsed) != 1:
      raise ValueError(f"run.sample takes one strategy, but {strategy!r} is {len(parsed)} arms; "
                       f"loop over them, or run a study with sample.py --guidance.")
    return parsed[0].label, parsed[0].strategy
  if callable(strategy):
    return getattr(strategy, "__name__", "custom"), weight_schedule(strategy)
  raise ValueError(f"strategy must be a spec string, a guidance rule or a function "
                   f"(k, t, signals) -> w; got {strategy!r}.")


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """A trained workdir's EMA model at one checkpoint, ready to sample (`load`)."""

  workdir: str
  config: Any  # the ml_collections config saved in workdir/config.json
  step: int  # the checkpoint step
  params: Any  # the EMA parameters (nnx.State)
  eps_apply: Callable  # (params, x_t, t, cond) -> ε
  schedule: NoiseSchedule
  null_id: int

  @property
  def is_text(self) -> bool:
    return config_lib.is_text(self.config)

  @property
  def shape(self) -> tuple[int, int, int]:
    d = self.config.data
    return (d.resolution, d.resolution, d.channels)

  def eps_fn(self, x_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
    """The model's noise prediction ε(x_t [B,H,W,C], t [B] int32, cond [B] class ids or tokens)."""
    return self.eps_apply(self.params, x_t, t, cond)

  def conditions(self, *, num: int, classes: Sequence[int] = (), prompts: Sequence[str] = ()
                 ) -> tuple[Any, Any, np.ndarray]:
    """(cond [num, ...], null [1, ...], requested class [num]) cycling `classes` (class runs; all
    classes by default) or `prompts` (text runs)."""
    if self.is_text:
      if classes or not prompts:
        raise ValueError("This run is text-conditioned: pass prompts=[...], not classes.")
      tok = tokenizer_lib.Tokenizer.load(f"{self.workdir}/{tokenizer_lib.FILENAME}")
      cycled = [prompts[i % len(prompts)] for i in range(num)]
      return tok.encode_batch(cycled), tok.null_tokens[None], np.full(num, -1, np.int32)
    if prompts:
      raise ValueError("This run is class-conditional: pass classes=[...], not prompts.")
    num_classes = config_lib.unet_config(self.config).num_classes
    options = sampling.SamplingOptions(num=num, classes=tuple(int(c) for c in classes))
    options.validate(self.config.diffusion.T, num_classes)
    _, labels, _ = sampling.shared_inputs(options, shape=self.shape, num_classes=num_classes)
    return labels, np.asarray([self.null_id], np.int32), labels

  def sample(self, strategy: StrategyLike = "cfg", *, classes: Sequence[int] = (),
             prompts: Sequence[str] = (), num: int = 16, seed: int = 0,
             num_steps: int | None = None, sampler: str | None = None, eta: float | None = None,
             spacing: str | None = None, batch: int = 200, compute_d: bool = False,
             eps_fn: EpsFn | None = None) -> sampling.SampleResult:
    """Samples `num` images with one guidance strategy, conditions cycled over `classes`/`prompts`.

    Args:
      strategy: a spec ("cfg:w=3", "opposite:tau=650:s=2"), a Strategy, or a weight function
        (k, t, signals) -> w (see `minidiff.core.weight_fn`).
      classes / prompts: the conditions, cycled (class runs default to every class).
      num: images; seed: the initial noises' and sampler keys' seed (as sample.py's --seed).
      num_steps, sampler, eta, spacing: default config.sample's.
      batch: images per jitted call (the keys depend on it: keep sample.py's 200 to match it).
      compute_d: evaluate both branches even when the strategy needs one, so d_eps is filled.
      eps_fn: your own denoiser (x_t, t, cond) -> ε in place of the model, e.g. a wrapper of
        `run.eps_fn`; it is traced into the same jitted sampler.

    Returns:
      A SampleResult: samples [num, H, W, C] in [−1, 1], labels [num], t [S], d_eps / d_x0 / w
      [S, num], transition_step [num], compile_s, sample_s.
    """
    label, strat = as_strategy(strategy, T=self.config.diffusion.T)
    options = sampling.options_from_config(self.config, num=num, seed=seed, num_steps=num_steps,
                                           sampler=sampler, eta=eta, spacing=spacing, batch=batch)
    options.validate(self.config.diffusion.T, config_lib.unet_config(self.config).num_classes)
    cond, null, labels = self.conditions(num=num, classes=classes, prompts=prompts)
    x_T, key = sampling.shared_noise(options, shape=self.shape)  # noqa: N806
    apply = self.eps_apply if eps_fn is None else (lambda p, x_t, t, c: eps_fn(x_t, t, c))
    run = samplers.make_sampler(
        apply, schedule=self.schedule, strategy=strat, sampler=options.sampler,
        num_steps=options.num_steps, eta=options.eta, spacing=options.spacing,
        clip_x0=options.clip_x0, compute_d=compute_d)
    (out,), compile_s, sample_s = sampling.sample_in_batches(
        lambda *example: run.lower(*example).compile(), self.params, x_T, cond, null, key,
        batch=options.batch, mesh=sharding.data_mesh(), desc=label,
        steps_per_batch=options.num_steps)
    result = sampling.to_result(out, labels, compile_s, sample_s)
    sampling.check_finite(result, label)
    return result


def load(workdir: str, *, step: int | None = None, progress: bool = False) -> Run:
  """The EMA model of `workdir` at its latest checkpoint (or at `step`, one still on disk).

  `progress`: tick the sampling progress bar at every step (a host callback in the sampler;
  the samples are the same). Raises FileNotFoundError / ValueError with one clear line (no
  config.json, no checkpoint, a step that is not there) before anything is compiled.
  """
  config, eps_apply, params, schedule, null_id, step = sampling.load_sampling_model(
      workdir, step=step, progress=progress)
  return Run(workdir=workdir, config=config, step=int(step), params=params, eps_apply=eps_apply,
             schedule=schedule, null_id=int(null_id))


def jitted_sampler(eps_fn: EpsFn, *, schedule: NoiseSchedule | str = "linear", T: int = 1000,  # noqa: N803
                   strategy: StrategyLike = "cfg", sampler: str = "ddim", num_steps: int = 50,
                   eta: float = 0.0, spacing: str = "uniform", clip_x0: bool = True,
                   compute_d: bool = False) -> Callable:
  """Any denoiser into the jitted DDIM/DDPM sampler with guidance.

  `eps_fn(x_t [B,H,W,C], t [B] int32, cond) -> ε` (cond a pytree with leading dim B; the null
  condition has the same structure and leading dim B). `schedule` is a NoiseSchedule or a name
  ("linear", "cosine") with T steps; the other options mean what they mean in
  `minidiff.core.samplers.sample`. Returns jitted `(x_T, cond, null_cond, key) -> (x₀, Diagnostics)`.
  """
  if isinstance(schedule, str):
    schedule = make_schedule(schedule, T)
  _, strat = as_strategy(strategy, T=schedule.T)
  run = samplers.make_sampler(lambda p, x_t, t, c: eps_fn(x_t, t, c), schedule=schedule,
                              strategy=strat, sampler=sampler, num_steps=num_steps, eta=eta,
                              spacing=spacing, clip_x0=clip_x0, compute_d=compute_d)
  return jax.jit(lambda x_T, cond, null_cond, key: run(None, x_T, cond, null_cond, key))  # noqa: N803
