"""CFG with rescaling (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
flawed", §3.4): a rule that acts on ε̂ itself, not only on w.

ε_cfg = ε_u + w (ε_c − ε_u) overshoots the conditional prediction's scale at large w; the rule
rescales it to the per-sample standard deviation of ε_c and mixes: ε̂ = φ ε_cfg·std(ε_c)/std(ε_cfg)
+ (1 − φ) ε_cfg (φ = 0 is plain CFG; diffusers' `guidance_rescale` applies it to ε the same way).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from minidiff.core import guidance, rule


@dataclasses.dataclass(frozen=True)
class RescaledCFG(rule.Rule):
  """CFG with weight w, rescaled to std(ε_c) with mixing φ (module doc)."""

  name = "rescaled_cfg"
  family = "rescaled_cfg"
  help = "CFG with w, then eps-hat rescaled to std(eps_c), mixed with phi (Lin et al.)"
  both_branches = True  # std(ε_c) is read whatever w is

  w: float = 7.5
  phi: float = 0.7

  def __post_init__(self):
    rule.check_finite(w=self.w, phi=self.phi)
    if not 0.0 <= self.phi <= 1.0:
      raise ValueError(f"rescaled_cfg: phi must lie in [0, 1], got {self.phi!r}.")

  def levels(self) -> tuple[float, ...]:
    return (self.w,)

  def predict(self, s, state, *, schedule, branches, clip_x0):
    w = jnp.full(s.d_eps.shape, self.w, jnp.float32)
    eps_cfg = guidance.guide(s.eps_c, s.eps_u, w)  # ε_u + w (ε_c − ε_u)
    axes = tuple(range(1, eps_cfg.ndim))
    ratio = jnp.std(s.eps_c, axis=axes, keepdims=True) / jnp.std(eps_cfg, axis=axes, keepdims=True)
    return self.phi * eps_cfg * ratio + (1.0 - self.phi) * eps_cfg, w, state  # Lin et al. eq. 15–16
