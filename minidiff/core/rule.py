"""The guidance-rule interface: what one sampling step shows a rule, and what the rule returns.

A rule decides the guided prediction ε̂ at every step of `minidiff.core.samplers.sample`, per
sample. The loop (written once, for every stepper) does, at step k with timestep t:

  1. `cond_k, null_k = rule.conditions(state, k, t, cond, null_cond, schedule=…)`: the conditions
     the two branches see (the identity for most rules; CADS anneals the condition here);
  2. ε_c, ε_u in ONE forward pass (a 2B batch; a branch the rule never needs is skipped), and
     d_eps = ‖ε_c − ε_u‖₂, d_x0 = σ_t d_eps per sample;
  3. `eps, w, state = rule.predict(StepSignals(…), state, schedule=…, branches=…, clip_x0=…)`:
     the guided ε̂ [B, …], the weight w [B] it applied (recorded) and the rule's new per-sample
     state; `branches(x)` calls the model again at this step's t and conditions (AMG's gradient);
  4. the stepper's update x_t → x_prev, then `state = rule.after_step(state, k, x_t, x_prev)`.

Before the loop, `rule.prepare(Preparation(…))` may change the conditions and the initial state:
Wen et al. optimise the condition embedding there, the two-pass rule runs its first pass there.

A rule is a frozen dataclass; a subclass that sets the class attribute `name` registers itself
under that spec name (`minidiff.core.registry` lists them), declaring `family` (its group on the
memorization–alignment frontier) and `help` (one line for `sample.py --help` and the docs). Its
spec parameters are its dataclass fields with their defaults, less those with `init=False` (fields
a subclass pins or derives, e.g. opposite guidance's w_pre = −s).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from minidiff.core.schedule import NoiseSchedule

PyTree = Any
Branches = Callable[[jax.Array], "tuple[jax.Array | None, jax.Array | None]"]

_REGISTERED: dict[str, type] = {}  # spec name → rule class, filled by Rule.__init_subclass__


@dataclasses.dataclass(frozen=True)
class StepSignals:
  """What one sampling step shows a rule (B samples; ε_c or ε_u None when the branch is skipped)."""

  k: jax.Array  # scalar int32 step index, 0 … S−1
  t: jax.Array  # scalar int32 timestep on the model's 0 … T−1 scale
  x_t: jax.Array  # [B, H, W, C] the current sample
  eps_c: jax.Array | None  # [B, H, W, C] conditional prediction
  eps_u: jax.Array | None  # [B, H, W, C] unconditional (null-condition) prediction
  d_eps: jax.Array  # [B] ‖ε_c − ε_u‖₂ (NaN when a branch is skipped)
  d_x0: jax.Array  # [B] ‖x̂₀_c − x̂₀_u‖₂ = σ_t d_eps


@struct.dataclass
class GuidanceState:
  """Carried state of the rules without memory of their own: only the transition bookkeeping."""

  transition_step: jax.Array  # [B] int32: step k at which w_post took over, −1 if never / n.a.


def no_transition(batch: int) -> GuidanceState:
  """The initial GuidanceState of `batch` samples (no transition yet)."""
  return GuidanceState(transition_step=jnp.full((batch,), -1, jnp.int32))


@dataclasses.dataclass(frozen=True)
class Preparation:
  """What `Rule.prepare` sees before the loop (all traced inside the sampler's jit)."""

  eps_fn: Callable  # the denoiser eps_fn(x_t [B, …], t [B] int32, cond) → ε
  embed_fn: Callable | None  # cond → the model's condition-embedding dict (None: not given)
  x_T: jax.Array  # [B, H, W, C] the initial noise  # noqa: N815
  cond: PyTree
  null_cond: PyTree
  key: jax.Array  # the sampler's key (the loop splits it into one key per step)
  grid: Any  # [S] int32 numpy time grid, descending
  schedule: NoiseSchedule
  run: Callable  # rule → (x₀, Diagnostics): the same loop from x_T with the same keys


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What `Rule.prepare` returns: the conditions the loop uses and the initial state (None:
  `init_state`)."""

  cond: PyTree
  null_cond: PyTree
  state: PyTree | None = None


def check_finite(**values: Any) -> None:
  """Raises ValueError naming the first value that is not a finite real number."""
  for name, v in values.items():
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
      raise ValueError(f"{name} must be a finite number, got {v!r}.")


def is_integer(v: Any) -> bool:
  """True for an int, or a finite float with an integral value (e.g. 600.0)."""
  return (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
          and v == int(v))


@dataclasses.dataclass(frozen=True)
class Rule:
  """Base of every guidance rule (see the module doc). Subclasses override what they need."""

  # The spec name; "" = not registered (a base or an internal rule). Not annotated, so that a
  # subclass may make `name` a dataclass field of its own (a label: weight_fn.FunctionWeight).
  name = ""
  family: ClassVar[str] = ""  # the frontier family of its arms
  help: ClassVar[str] = ""  # one line: what the rule does, and whose it is
  # True for rules that read d_t or both predictions whatever w is: both branches at every step.
  both_branches: ClassVar[bool] = False
  needs_embedding: ClassVar[bool] = False  # prepare() calls Preparation.embed_fn
  needs_images: ClassVar[bool] = False  # the rule searches the training images (`with_images`)
  needs_row_keys: ClassVar[bool] = False  # cond = {"cond": …, "row_key": [B, 2] uint32}

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # A class whose `name` is a dataclass field (a per-instance label) does not register.
    name = "" if "name" in cls.__dict__.get("__annotations__", {}) else cls.__dict__.get("name", "")
    if name:
      if name in _REGISTERED and _REGISTERED[name].__qualname__ != cls.__qualname__:
        raise ValueError(f"Two guidance rules are named {name!r}: {_REGISTERED[name].__qualname__} "
                         f"and {cls.__qualname__}; give the new one another `name`.")
      if not cls.__dict__.get("family") or not cls.__dict__.get("help"):
        raise ValueError(f"Guidance rule {name!r} ({cls.__qualname__}) must declare `family` and "
                         f"`help` beside its name.")
      _REGISTERED[name] = cls

  def levels(self) -> tuple[float, ...]:
    """The w values this rule can apply (for a ramp: its two ends)."""
    return ()

  @property
  def needs_uncond(self) -> bool:
    """Whether ε_u must be evaluated: some applied w differs from 1 (or `both_branches`)."""
    return self.both_branches or any(w != 1.0 for w in self.levels())

  @property
  def needs_cond(self) -> bool:
    """Whether ε_c must be evaluated: some applied w differs from 0 (or `both_branches`)."""
    return self.both_branches or any(w != 0.0 for w in self.levels())

  def validate(self, T: int) -> None:  # noqa: N803 (the paper's name)
    """Raises ValueError if the rule cannot run on a schedule of length T."""
    del T

  def init_state(self, batch: int) -> PyTree:
    """Initial carried state for `batch` samples; always has a [B] int32 `transition_step`."""
    return no_transition(batch)

  def prepare(self, ctx: Preparation) -> Prepared:
    """Before the loop: the conditions it uses and its initial state (default: as given)."""
    return Prepared(ctx.cond, ctx.null_cond)

  def conditions(self, state: PyTree, k: jax.Array, t: jax.Array, cond: PyTree,
                 null_cond: PyTree, *, schedule: NoiseSchedule) -> tuple[PyTree, PyTree]:
    """The conditions the two branches see at step k (default: unchanged)."""
    del state, k, t, schedule
    return cond, null_cond

  def predict(self, s: StepSignals, state: PyTree, *, schedule: NoiseSchedule,
              branches: Branches, clip_x0: bool) -> tuple[jax.Array, jax.Array, PyTree]:
    """(ε̂ [B, …], w [B] float32, new state) at this step."""
    raise NotImplementedError(f"{type(self).__name__} must define predict (or be a Strategy).")

  def after_step(self, state: PyTree, k: jax.Array, x_t: jax.Array, x_prev: jax.Array) -> PyTree:
    """The state after the stepper moved x_t to x_prev (default: unchanged)."""
    del k, x_t, x_prev
    return state


def registered() -> dict[str, type]:
  """Spec name → rule class of every rule defined so far (`minidiff.core.registry` imports all)."""
  return dict(_REGISTERED)
