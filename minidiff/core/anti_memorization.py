"""Sampling with anti-memorization guidance (Chen et al., CVPR 2024), one `lax.scan`.

Per step k (parameters: minidiff.core.mitigations.AntiMemorization):
  1. ε_c, ε_u in one forward pass; ε̂ = ε_u + w (ε_c − ε_u); x̂₀ = (x_t − √(1−ᾱ) ε̂)/√ᾱ, clipped;
  2. its nearest and second-nearest de-duplicated training images NN₁, NN₂ (exact search) and
     σ = 1 − ‖x̂₀ − NN₁‖/‖x̂₀ − NN₂‖; a sample is *triggered* at this step when σ > λ;
  3. despecification: a triggered sample's w is lowered (`mitigations.despecified_weight`);
  4. dissimilarity guidance: a triggered sample's ε̂ gains c_sim √(1−ᾱ_t) ∇_{x_t} σ, the gradient
     taken through the model (through_model=1: one backward pass, only at steps where some sample
     is triggered) or with ε̂ held fixed (through_model=0: ∇_{x̂₀} σ / √ᾱ_t, no model call);
  5. the DDIM / DDPM update of minidiff.core.samplers with that ε̂.
This baseline reads the training images at sampling time; Jain et al.'s methods do not.

Diagnostics as in `samplers.sample`: d_eps, d_x0 of the forward pass, the applied w, and
`transition_step` = the first step at which the sample was triggered (−1 if never).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.core import guidance, mitigations, samplers
from minidiff.core.schedule import NoiseSchedule

_STEPS = {"ddim": samplers.ddim_step, "ddpm": samplers.ddpm_step}


def sample_amg(
    eps_fn: guidance.EpsFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,  # noqa: N803
    cond: guidance.PyTree,
    null_cond: guidance.PyTree,
    key: jax.Array,
    *,
    amg: mitigations.AntiMemorization,
    train_images: jax.Array,
    sampler: str = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_x0: bool = True,
) -> tuple[jax.Array, samplers.Diagnostics]:
  """Samples x₀ from x_T under anti-memorization guidance (see the module doc).

  Args:
    eps_fn, schedule, x_T, cond, null_cond, key, sampler, num_steps, eta, spacing, clip_x0: as in
      `samplers.sample` (the same keys per step, so w = w and no trigger equals CFG with w).
    amg: the parameters.
    train_images: the de-duplicated training set [U, H, W, C] (U ≥ 2), the images searched.

  Returns:
    (x₀ [B, H, W, C], Diagnostics; x0 holds no snapshots).
  """
  if sampler not in _STEPS:
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {tuple(_STEPS)}.")
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta!r}.")
  points = jnp.asarray(train_images, x_T.dtype).reshape(np.shape(train_images)[0], -1)
  if points.shape[0] < 2 or points.shape[1] != int(np.prod(x_T.shape[1:])):
    raise ValueError(f"amg needs ≥ 2 training images of the samples' shape {x_T.shape[1:]}, got "
                     f"{np.shape(train_images)}.")
  grid = samplers.time_grid(schedule.T, num_steps, spacing)
  S, B = len(grid), x_T.shape[0]  # noqa: N806
  t_prev = np.append(grid[1:], -1).astype(np.int32)
  keys = jax.random.split(key, S)
  step_fn = _STEPS[sampler]
  flat = lambda a: a.reshape(B, -1)  # noqa: E731

  def branches(x_t, t):
    return guidance.predict_branches(eps_fn, x_t, jnp.full((B,), t, jnp.int32), cond, null_cond)

  def x0_of(x_t, eps, ab):
    x0 = (x_t - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)  # x̂₀ = (x_t − √(1−ᾱ) ε̂)/√ᾱ
    return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0

  def body(carry, xs):
    x_t, first = carry
    k, t, tp, step_key = xs
    ab = schedule.alpha_bar[t]
    eps_c, eps_u = branches(x_t, t)
    d_eps = jnp.linalg.norm(flat(eps_c - eps_u), axis=1)
    x0 = x0_of(x_t, guidance.guide(eps_c, eps_u, jnp.full((B,), amg.w)), ab)
    idx, _ = mitigations.nearest_two(flat(x0), points)
    nn1, nn2 = points[idx[:, 0]], points[idx[:, 1]]
    sigma = mitigations.similarity(flat(x0), nn1, nn2)
    triggered = sigma > amg.threshold
    w = mitigations.despecified_weight(amg, sigma) if amg.c_spe > 0 else jnp.full((B,), amg.w)
    eps = guidance.guide(eps_c, eps_u, w)  # ε̂ with the despecified w
    if amg.c_sim > 0 and amg.through_model:
      def sigma_sum(x):  # Σ_i σ_i(x): samples are independent, so its gradient is per sample
        e_c, e_u = branches(x, t)
        x0_x = x0_of(x, guidance.guide(e_c, e_u, jax.lax.stop_gradient(w)), ab)
        return jnp.sum(mitigations.similarity(flat(x0_x), nn1, nn2))
      grad = jax.lax.cond(jnp.any(triggered), jax.grad(sigma_sum), jnp.zeros_like, x_t)
    elif amg.c_sim > 0:  # ε̂ held fixed: ∂x̂₀/∂x_t = I/√ᾱ, so ∇_{x_t} σ = ∇_{x̂₀} σ / √ᾱ
      sigma_of = lambda x0f: jnp.sum(mitigations.similarity(x0f, nn1, nn2))  # noqa: E731
      grad = jax.grad(sigma_of)(flat(x0_of(x_t, eps, ab))).reshape(x_t.shape) / jnp.sqrt(ab)
    if amg.c_sim > 0:
      push = amg.c_sim * jnp.sqrt(1.0 - ab) * grad  # + c_sim √(1−ᾱ) ∇σ: x̂₀ moves down σ's slope
      eps = eps + jnp.where(triggered.reshape((B,) + (1,) * (x_t.ndim - 1)), push, 0.0)
    x_prev, _ = step_fn(schedule, x_t, eps, t, tp, step_key, eta=eta, clip_x0=clip_x0)
    first = jnp.where((first < 0) & triggered, k, first)
    return (x_prev, first), (d_eps, d_eps * schedule.sigma(t), w)

  xs = (jnp.arange(S, dtype=jnp.int32), jnp.asarray(grid), jnp.asarray(t_prev), keys)
  init = (x_T, jnp.full((B,), -1, jnp.int32))
  (x_0, first), (d_eps, d_x0, w) = jax.lax.scan(body, init, xs)
  return x_0, samplers.Diagnostics(t=jnp.asarray(grid), d_eps=d_eps, d_x0=d_x0, w=w,
                                   transition_step=first,
                                   x0=jnp.zeros((0,) + x_T.shape, x_T.dtype))
