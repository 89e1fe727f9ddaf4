"""A guidance weight from a plain function: `weight_schedule(lambda k, t, s: ...)` is a Strategy.

The strategies of `minidiff.core.guidance` are small frozen dataclasses with carried state; a
schedule that is a function of the step alone (or of this step's signals) needs none of that:

  strategy = weight_schedule(lambda k, t, s: jnp.where(t > 600, 0.0, 5.0))   # delayed CFG
  strategy = weight_schedule(lambda k, t, s: 1.0 + 6.5 * (s.d_eps < 40.0))   # guided when d is small

The function is traced inside the jitted sampler: write it with `jnp` (no Python `if` on `t` or
on a signal). It receives
  k: the step index 0 … S−1 (int32 scalar), t: the timestep on the 0 … T−1 scale (int32 scalar),
  signals: `StepSignals` of this step's forward pass (d_eps, d_x0 per sample [B], sigma_t),
and returns w as a scalar or per sample [B] (ε̂ = ε_u + w·(ε_c − ε_u); w = 0 unconditional, w = 1
conditional). Both branches are evaluated at every step, so the signals are always defined.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from minidiff.core.guidance import GuidanceState, Strategy


@struct.dataclass
class StepSignals:
  """What a weight function sees at one sampling step besides (k, t); all from the same forward
  pass that the weight is applied to."""

  d_eps: jax.Array  # [B] ‖ε_c − ε_u‖₂ per sample
  d_x0: jax.Array  # [B] ‖x̂₀_c − x̂₀_u‖₂ = σ_t d_eps
  sigma_t: jax.Array  # scalar σ_t = √((1−ᾱ_t)/ᾱ_t)


WeightFn = Callable[[jax.Array, jax.Array, StepSignals], jax.Array]


@dataclasses.dataclass(frozen=True)
class FunctionWeight(Strategy):
  """A Strategy whose w is `fn(k, t, signals)` (module doc); build it with `weight_schedule`.

  Stateless: `transition_step` stays −1 (a function has no transition to report). Hashed,
  compared and repr'd by the function object (its repr carries its address, so two lambdas with
  the same body are different strategies and never share a compiled sampler).
  """

  fn: WeightFn
  name: str = "custom"

  def levels(self) -> tuple[float, ...]:
    return ()  # unknown before tracing: both branches are evaluated

  both_branches: ClassVar[bool] = True  # w is traced: its values are unknown before tracing

  def weight(self, state: GuidanceState, k, t, d_eps, d_x0, *, schedule):
    signals = StepSignals(d_eps=d_eps, d_x0=d_x0, sigma_t=schedule.sigma(t))
    w = jnp.asarray(self.fn(k, t, signals), jnp.float32)
    if w.ndim > 1 or (w.ndim == 1 and w.shape != d_eps.shape):
      raise ValueError(f"weight function {self.name!r} returned w of shape {w.shape}; return a "
                       f"scalar or one w per sample, shape {d_eps.shape}.")
    return jnp.broadcast_to(w, d_eps.shape), state


def weight_schedule(fn: WeightFn, *, name: str = "custom") -> FunctionWeight:
  """The Strategy whose guidance weight at step k and timestep t is `fn(k, t, signals)`.

  Args:
    fn: `(k, t, signals: StepSignals) -> w` (scalar or [B]), traced with jnp (module doc).
    name: a label for logs and reprs.

  Returns:
    A `FunctionWeight`, usable wherever a guidance strategy is (samplers, `minidiff.load(...).sample`).
  """
  if not callable(fn):
    raise ValueError(f"weight_schedule needs a function (k, t, signals) -> w, got {fn!r}.")
  return FunctionWeight(fn=fn, name=name)
