"""Per-sample transition points on a trained model: the true k*, the oracle frontier, detectors.

  python scripts/transitions.py --workdir runs/mnist_dup_s0 --num 200 --outdir OUT

For every initial noise (on memorized conditions), static switches from w_pre to w_post at every
grid step k = 0 … S (k = S: never) are sampled from one shared prefix
(`samplers.sample_switch_family`). From the copy flag of each (noise, k):

  - k* = the earliest step whose switch does not end as a copy (−1: none does), its histogram,
    the copy curve per noise and the fraction of noises whose copy(k) is monotone;
  - the oracle: every noise switched at its own k* + j — the best any per-sample rule can reach,
    point by point on the memorization–alignment frontier beside the static-τ family (row k of
    the sweep is the static transition at τ = t_k);
  - detectors (minidiff.core.transitions): a latched rule run with the sweep's w_pre follows the
    same trajectory until it fires, so its k̂ is read off the prefix's d record and its sample is
    row k̂ of the sweep, exactly. Scored by k̂ − k* (median, IQR, within ±2 steps), the fraction
    that never fire, and its frontier point, paired (Newcombe interval, exact McNemar) against
    the best single τ.
Arms off the sweep's trajectory (the authors' dynamic rule with w_pre = 1, the two-pass opposite
guidance rule) are sampled on the same noises and placed on the same frontier.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

OFFSETS = (0, 1, 2, 3, 5, 8)  # j of the oracle at k* + j
WITHIN = 2  # "within ±2 steps"
COPY_DEF = ("the study's calibrated copy flag: shift-NCC with the named training image above its "
            "threshold at 1% false positives on real held-out images of its class")
ALIGNMENT_DEF = "the evaluation classifier's class is the requested one"


# --- the analysis: pure numpy on flags [K, N] ------------------------------------------------------


def k_star(copied: np.ndarray, steps: Sequence[int], *, none: int = -1) -> np.ndarray:
  """Per noise, the earliest swept switch step whose sample is not a copy.

  Args:
    copied: [K, N] bool, copied[i, n] = switching at steps[i] from noise n ends as a copy.
    steps: [K] ascending switch steps.
    none: the value for a noise that copies at every swept step.

  Returns:
    [N] int.
  """
  copied = np.asarray(copied, bool)
  steps = np.asarray(steps)
  if copied.ndim != 2 or copied.shape[0] != steps.shape[0]:
    raise ValueError(f"copied must be [K, N] with K = len(steps) = {steps.shape[0]}, got "
                     f"{copied.shape}.")
  if np.any(np.diff(steps) <= 0):
    raise ValueError(f"steps must be strictly ascending, got {steps.tolist()}.")
  safe = ~copied
  return np.where(safe.any(axis=0), steps[np.argmax(safe, axis=0)], none)


def monotone_fraction(copied: np.ndarray) -> float:
  """Fraction of noises whose copy(k) never turns back on once off (non-increasing in k)."""
  c = np.asarray(copied, np.int8)
  return float(np.mean(np.all(np.diff(c, axis=0) <= 0, axis=0)))


def rows_at(steps: Sequence[int], switch: np.ndarray) -> np.ndarray:
  """Row index of each noise's switch step in the sweep (switch < 0 or past the end: the last row,
  i.e. never switching when the sweep ends at k = S)."""
  steps = np.asarray(steps)
  switch = np.asarray(switch)
  switch = np.where((switch < 0) | (switch > steps[-1]), steps[-1], switch)
  rows = np.searchsorted(steps, switch)
  if np.any(steps[rows] != switch):
    raise ValueError("a switch step is not on the sweep's steps: sweep every step to score it.")
  return rows


def pick(flags: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """flags [K, N] at one row per noise → [N]."""
  return np.asarray(flags)[np.asarray(rows), np.arange(np.shape(flags)[1])]


def lag_stats(k_hat: np.ndarray, k_ref: np.ndarray) -> dict[str, Any]:
  """k̂ − k* over noises where both exist (≥ 0): median, IQR, fraction within ±2; never fired."""
  k_hat, k_ref = np.asarray(k_hat), np.asarray(k_ref)
  ok = (k_hat >= 0) & (k_ref >= 0)
  lag = (k_hat - k_ref)[ok]
  q = (lambda p: float(np.percentile(lag, p))) if lag.size else (lambda p: None)
  return dict(n=int(ok.sum()), median=q(50), q25=q(25), q75=q(75),
              within=float(np.mean(np.abs(lag) <= WITHIN)) if lag.size else None,
              early=float(np.mean(lag < 0)) if lag.size else None,
              never_fired=float(np.mean(k_hat < 0)))


def rate(flag: np.ndarray) -> dict[str, Any]:
  """{k, n, rate, ci} with a 95% Wilson interval."""
  from minidiff.metrics import stats
  flag = np.asarray(flag, bool)
  ci = stats.wilson_interval(int(flag.sum()), int(flag.size))
  return dict(k=int(flag.sum()), n=int(flag.size), rate=float(flag.mean()) if flag.size else None,
              ci=[ci.low, ci.high])


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
  """rate(b) − rate(a) on the same noises: Newcombe's paired interval and the exact McNemar p."""
  from minidiff.metrics import stats
  d = stats.paired_difference(np.asarray(a, bool), np.asarray(b, bool))
  return dict(diff=d.diff, ci=[d.interval.low, d.interval.high], p=d.p_value, b=d.b, c=d.c, n=d.n)


def best_static(copied: np.ndarray, correct: np.ndarray, steps: Sequence[int], *,
                reference: float, tolerance: float, where: np.ndarray | None = None) -> int:
  """The row of the least-copying static switch whose class accuracy is ≥ reference − tolerance
  (ties: the higher accuracy, then the earlier step), over the noises `where`."""
  where = np.ones(np.shape(copied)[1], bool) if where is None else np.asarray(where, bool)
  c, a = np.asarray(copied)[:, where].mean(axis=1), np.asarray(correct)[:, where].mean(axis=1)
  ok = np.flatnonzero(a >= reference - tolerance - 1e-12)
  if not ok.size:
    raise ValueError(f"no static switch reaches class accuracy {reference - tolerance:.3f}.")
  return int(min(ok, key=lambda i: (c[i], -a[i], i)))


@dataclasses.dataclass(frozen=True)
class Outcomes:
  """Per-noise copy and class flags of every row of a sweep (K rows = switch steps)."""

  steps: np.ndarray  # [K] switch steps, ascending; the last is S (never) in a full sweep
  t: np.ndarray  # [S] the grid
  copied: np.ndarray  # [K, N] bool
  correct: np.ndarray  # [K, N] bool, class of the sample = the requested class


def analyse(out: Outcomes, detectors: Mapping[str, np.ndarray], *,
            extra: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = (),
            tolerance: float = 0.03) -> dict[str, Any]:
  """Everything the write-up reports, from the sweep's flags and each detector's k̂ [N].

  `extra` maps an arm sampled apart from the sweep (e.g. the two-pass rule) to its (copied [N],
  correct [N], k̂ [N] or None, same_pre): with same_pre (its w before k̂ is the sweep's w_pre, so
  it is on the sweep's trajectory until k̂) its k̂ − k* is scored too. The reference alignment is
  CFG from the first step (row 0).
  """
  steps, copied, correct = out.steps, out.copied, out.correct
  n = copied.shape[1]
  ks = k_star(copied, steps)
  S = len(out.t)  # noqa: N806
  reference = float(correct[0].mean())
  best = best_static(copied, correct, steps, reference=reference, tolerance=tolerance)
  point = lambda c, a: dict(copy=rate(c), alignment=rate(a))  # noqa: E731
  static = [dict(step=int(k), t=int(out.t[k]) if k < S else None, **point(copied[i], correct[i]))
            for i, k in enumerate(steps)]
  oracle = []
  for j in OFFSETS:
    rows = rows_at(steps, np.where(ks >= 0, np.minimum(ks + j, steps[-1]), steps[-1]))
    c, a = pick(copied, rows), pick(correct, rows)
    oracle.append(dict(j=j, **point(c, a), vs_best_tau=dict(copy=paired(copied[best], c),
                                                            alignment=paired(correct[best], a))))
  # The best any per-sample switch could do: per noise the earliest step that neither copies nor
  # loses the class, else the earliest that does not copy, else CFG from step 0.
  good = ~copied & correct
  best_rows = np.where(good.any(axis=0), np.argmax(good, axis=0),
                       np.where((~copied).any(axis=0), np.argmax(~copied, axis=0), 0))
  c, a = pick(copied, best_rows), pick(correct, best_rows)
  oracle_best = dict(**point(c, a), vs_best_tau=dict(copy=paired(copied[best], c),
                                                     alignment=paired(correct[best], a)),
                     steps=np.asarray(steps)[best_rows].tolist())
  # At the reference's alignment: the earliest step that neither copies nor loses the class,
  # else CFG from step 0 (the class kept, the copy too) — the least copying any per-sample rule
  # can reach without giving up alignment.
  keep_rows = np.where(good.any(axis=0), np.argmax(good, axis=0), 0)
  c, a = pick(copied, keep_rows), pick(correct, keep_rows)
  oracle_best["keep_class"] = dict(**point(c, a), vs_best_tau=dict(
      copy=paired(copied[best], c), alignment=paired(correct[best], a)),
      steps=np.asarray(steps)[keep_rows].tolist())
  rows_out = {}
  for name, k_hat in detectors.items():
    rows = rows_at(steps, k_hat)
    c, a = pick(copied, rows), pick(correct, rows)
    rows_out[name] = dict(lag=lag_stats(k_hat, ks), fired_t_median=(
        float(np.median(out.t[k_hat[k_hat >= 0]])) if (k_hat >= 0).any() else None),
        **point(c, a), vs_best_tau=dict(copy=paired(copied[best], c),
                                        alignment=paired(correct[best], a)),
        vs_matched_tau=_vs_matched(copied, correct, steps, c, a), k_hat=np.asarray(k_hat).tolist())
  extra_out = {}
  for name, (c, a, k_hat, same_pre) in dict(extra).items():
    extra_out[name] = dict(**point(c, a), vs_best_tau=dict(copy=paired(copied[best], c),
                                                           alignment=paired(correct[best], a)),
                           vs_matched_tau=_vs_matched(copied, correct, steps, c, a),
                           fired=None if k_hat is None else float(np.mean(np.asarray(k_hat) >= 0)),
                           lag=lag_stats(k_hat, ks) if same_pre and k_hat is not None else None,
                           k_hat=None if k_hat is None else np.asarray(k_hat).tolist())
  return dict(
      n=int(n), num_steps=S, steps=np.asarray(steps).tolist(), t=np.asarray(out.t).tolist(),
      k_star=ks.tolist(), k_star_none=float(np.mean(ks < 0)),
      k_star_median=float(np.median(ks[ks >= 0])) if (ks >= 0).any() else None,
      monotone=monotone_fraction(copied), copy_curve=copied.mean(axis=1).tolist(),
      alignment_curve=correct.mean(axis=1).tolist(),
      reference=dict(alignment=reference, tolerance=tolerance, arm="CFG from step 0 (row 0)"),
      best_tau=dict(row=best, step=int(steps[best]), t=int(out.t[steps[best]]) if steps[best] < S
                    else None, **point(copied[best], correct[best])),
      static=static, oracle=oracle, oracle_best=oracle_best, detectors=rows_out, extra=extra_out,
      flags=dict(copied=["".join("1" if v else "0" for v in row) for row in copied],
                 correct=["".join("1" if v else "0" for v in row) for row in correct]),
      held_out=_held_out(out, detectors, ks, tolerance))


def _vs_matched(copied, correct, steps, c, a) -> dict[str, Any] | None:
  """Paired against the least-copying static switch at least as aligned as the rule (None if no
  static switch is)."""
  acc = correct.mean(axis=1)
  ok = np.flatnonzero(acc >= np.mean(a) - 1e-12)
  if not ok.size:
    return None
  i = int(min(ok, key=lambda r: (copied[r].mean(), -acc[r], r)))
  return dict(step=int(steps[i]), copy=paired(copied[i], c), alignment=paired(correct[i], a))


def _held_out(out: Outcomes, detectors: Mapping[str, np.ndarray], ks: np.ndarray,
              tolerance: float) -> dict[str, Any] | None:
  """The best rule and the best τ chosen on the even noises, compared on the odd ones."""
  n = out.copied.shape[1]
  if n < 4 or not detectors:
    return None
  even, odd = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
  ref = float(out.correct[0, even].mean())
  tau = best_static(out.copied, out.correct, out.steps, reference=ref, tolerance=tolerance,
                    where=even)
  scored = []
  for name, k_hat in detectors.items():
    rows = rows_at(out.steps, k_hat)
    c, a = pick(out.copied, rows), pick(out.correct, rows)
    if a[even].mean() >= ref - tolerance - 1e-12:
      scored.append((c[even].mean(), -a[even].mean(), name, c, a))
  if not scored:
    return dict(rule=None, tau_step=int(out.steps[tau]), note="no rule within tolerance on the "
                "even noises")
  _, _, name, c, a = min(scored)
  return dict(rule=name, tau_step=int(out.steps[tau]), n=int(odd.sum()),
              copy=paired(out.copied[tau, odd], c[odd]),
              alignment=paired(out.correct[tau, odd], a[odd]))


# --- detectors ----------------------------------------------------------------------------------


def default_detectors(*, w_pre: float, w_post: float) -> dict[str, Any]:
  """name → online rule (guidance.DynamicTransition or a minidiff.core.transitions rule)."""
  from minidiff.core import guidance, transitions
  dyn = lambda **kw: guidance.DynamicTransition(w_pre=w_pre, w_post=w_post, **kw)  # noqa: E731
  rules = {
      "authors_eps": dyn(measure="eps"),
      "authors_x0": dyn(measure="x0"),
      "guard_min_step10": dyn(measure="eps", min_step=10),
      "guard_peak0.5": dyn(measure="eps", peak_fraction=0.5),
      "guard_peak0.5_x0": dyn(measure="x0", peak_fraction=0.5),
      "guard_smooth3": dyn(measure="eps", smooth=3),
  }
  for m in ("x0", "eps"):
    for f in (0.3, 0.5, 0.7):
      rules[f"peak_drop_{m}_f{f}"] = transitions.PeakDrop(w_pre=w_pre, w_post=w_post, measure=m,
                                                          fraction=f)
    for lag in (2, 4):
      rules[f"peak_passed_{m}_lag{lag}"] = transitions.PeakPassed(w_pre=w_pre, w_post=w_post,
                                                                  measure=m, lag=lag)
  return rules


def fire_all(rules: Mapping[str, Any], d_eps: np.ndarray, d_x0: np.ndarray, t: np.ndarray,
             schedule) -> dict[str, np.ndarray]:
  """k̂ [N] of every rule on the recorded d [S, N] (−1: never)."""
  from minidiff.core import transitions
  return {name: np.asarray(transitions.fire_steps(rule, d_eps, d_x0, t=t, schedule=schedule))
          for name, rule in rules.items()}


# --- sampling on a trained model ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Static switches at every step k = 0 … S from the same noises."""

  steps: np.ndarray  # [K]
  t: np.ndarray  # [S]
  samples: np.ndarray  # [K, N, H, W, C]
  d_eps: np.ndarray  # [S, N] along the w_pre trajectory (the never-switching row)
  d_x0: np.ndarray  # [S, N]
  sample_s: float  # seconds of sampling, summed over the chunks (read back or sampled now)
  sampled_chunks: int = 0  # chunks sampled by this call (the others were read back)


def _digest(*trees) -> str:
  """A short hash of every leaf (dtype, shape, bytes) of the given pytrees."""
  import jax
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(trees):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _pad_rows(a, n: int) -> np.ndarray:
  """a [m, ...] with rows repeated to n ≥ m rows."""
  a = np.asarray(a)
  return a if a.shape[0] == n else np.concatenate([a, np.resize(a, (n - a.shape[0],) + a.shape[1:])])


def _run_meta(run, **kw: Any) -> dict[str, Any]:
  """What a cached chunk depends on besides its own noises and conditions: the model's weights,
  the sampler options (not the study's size) and the arm's own settings."""
  options = {k: v for k, v in dataclasses.asdict(run.options).items() if k not in ("num", "batch")}
  return dict(kw, options=options, params=_digest(run.params))


def sample_chunks(name: str, sample, x_T: np.ndarray, cond, key, *, chunk: int, cache: str,  # noqa: N803
                  meta: Mapping[str, Any], axes: Mapping[str, int | None], legacy: str | None = None
                  ) -> tuple[dict[str, np.ndarray], float, int]:
  """Samples x_T [N, ...] in chunks of `chunk` rows, each kept as cache/{name}_{row:05d}.npz.

  `sample(x [chunk, ...], cond, key)` → arrays by name (the last chunk is padded to `chunk` rows,
  so one compile serves every chunk; the padding is dropped along `axes[name]`, None: not per
  row, taken from the first chunk). Chunk r (its first row) gets `fold_in(key, r)`. A chunk file
  is reused when its meta matches: `meta`, its rows, and a hash of its noises and conditions, so
  a study with a larger --num (the noises and conditions of the first rows do not depend on it)
  reads back the chunks a smaller one sampled, and a changed model, seed or option samples anew.
  `legacy`: the meta an earlier version wrote for every chunk of this study, also accepted.

  Returns (the arrays concatenated over the N rows, the sampling seconds summed over every chunk,
  whether sampled now or read back, the number of chunks sampled now).
  """
  import jax
  os.makedirs(cache, exist_ok=True)
  n = x_T.shape[0]
  parts, seconds, fresh = [], 0.0, 0
  for i in range(0, n, chunk):
    rows = slice(i, min(i + chunk, n))
    x, c = x_T[rows], jax.tree.map(lambda a: np.asarray(a)[rows], cond)
    m = json.dumps(dict(meta, rows=[rows.start, rows.stop], chunk=chunk, inputs=_digest(x, c)),
                   sort_keys=True)
    path = os.path.join(cache, f"{name}_{i:05d}.npz")
    if os.path.exists(path):
      with np.load(path) as f:
        if str(f["meta"]) in (m, legacy):
          parts.append({k: f[k] for k in axes})
          seconds += float(f["seconds"])
          continue
    t0 = time.perf_counter()
    out = sample(_pad_rows(x, chunk), jax.tree.map(lambda a: _pad_rows(a, chunk), c),
                 jax.random.fold_in(key, i))
    dt = time.perf_counter() - t0
    keep = np.arange(rows.stop - rows.start)
    part = {k: np.asarray(out[k]) if ax is None else np.take(np.asarray(out[k]), keep, axis=ax)
            for k, ax in axes.items()}
    tmp = path + ".tmp.npz"
    np.savez(tmp, meta=m, seconds=dt, **part)
    os.replace(tmp, path)
    log.info("%s: noises %d–%d in %.0f s", name, rows.start, rows.stop - 1, dt)
    parts.append(part)
    seconds += dt
    fresh += 1
  cat = {k: parts[0][k] if ax is None else np.concatenate([p[k] for p in parts], axis=ax)
         for k, ax in axes.items()}
  return cat, seconds, fresh


def _compile_once(fn):
  """compiled_for(*example) of `sampling.sample_in_batches` that compiles `fn` on the first call
  only (every chunk has the same shapes)."""
  import jax
  compiled: dict = {}

  def compiled_for(*example):
    if "c" not in compiled:
      compiled["c"] = jax.jit(fn).lower(*example).compile()
    return compiled["c"]
  return compiled_for


def run_sweep(run, conditions, x_T: np.ndarray, key, *, w_pre: float, w_post: float,  # noqa: N803
              chunk: int, cache: str, use: int | None = None) -> Sweep:
  """Samples the sweep in chunks of `chunk` noises (the first `use` of x_T), each saved in
  `cache` and reused (`sample_chunks`)."""
  import jax.numpy as jnp

  from minidiff.core import samplers
  from minidiff.study import sampling
  o = run.options
  S = o.num_steps  # noqa: N806
  steps = np.arange(S + 1, dtype=np.int32)
  use = x_T.shape[0] if use is None else use

  def fn(params, x, cond, null, k):
    eps_fn = lambda x_t, t, c: run.eps_apply(params, x_t, t, c)  # noqa: E731
    return samplers.sample_switch_family(
        eps_fn, run.schedule, x, cond, null, k, w_pre=w_pre, w_post=w_post,
        switch_steps=jnp.asarray(steps), sampler=o.sampler, num_steps=S, eta=o.eta,
        spacing=o.spacing, clip_x0=o.clip_x0)

  compiled_for = _compile_once(fn)

  def sample(x, cond, k):
    outs, _, _ = sampling.sample_in_batches(compiled_for, run.params, x, cond, conditions.null, k,
                                            batch=chunk, mesh=run.mesh, num_arms=len(steps))
    return dict(samples=np.stack([o_[0] for o_ in outs]), d_eps=outs[-1][1]["d_eps"],
                d_x0=outs[-1][1]["d_x0"], t=outs[-1][3])

  # The chunks of the sweep before its meta hashed the inputs (keyed by the study's N instead).
  legacy = json.dumps(dict(w_pre=w_pre, w_post=w_post, options=dataclasses.asdict(o),
                           n=x_T.shape[0], chunk=chunk), sort_keys=True)
  out, seconds, fresh = sample_chunks(
      f"sweep_w{w_pre:g}", sample, x_T[:use], _first_rows(conditions.cond, use), key, chunk=chunk,
      cache=cache, meta=_run_meta(run, arm="sweep", w_pre=w_pre, w_post=w_post),
      axes=dict(samples=1, d_eps=1, d_x0=1, t=None), legacy=legacy)
  return Sweep(steps=steps, t=out["t"], samples=out["samples"], d_eps=out["d_eps"],
               d_x0=out["d_x0"], sample_s=seconds, sampled_chunks=fresh)


def run_two_pass(run, conditions, x_T: np.ndarray, key, *, s: float, w_post: float,  # noqa: N803
                 chunk: int, cache: str) -> tuple[np.ndarray, np.ndarray, float, int]:
  """The authors' two-pass opposite-guidance rule on every noise, in cached chunks: (samples,
  k̂ [N], seconds, chunks sampled now)."""
  from minidiff.core import samplers
  o = run.options

  def fn(params, x, cond, null, k):
    eps_fn = lambda x_t, t, c: run.eps_apply(params, x_t, t, c)  # noqa: E731
    x0, diag, two = samplers.sample_two_pass(
        eps_fn, run.schedule, x, cond, null, k, s=s, w_post=w_post,
        fallback_step=min(5, o.num_steps - 1), sampler=o.sampler,
        num_steps=o.num_steps, eta=o.eta, spacing=o.spacing, clip_x0=o.clip_x0)
    return x0, diag.replace(transition_step=two.transition_step)

  return _sample_arm(fn, run, conditions, x_T, key, name=f"two_pass_s{s:g}_w{w_post:g}",
                     chunk=chunk, cache=cache, meta=_run_meta(run, arm="two_pass", s=s, w_post=w_post))


def run_arm(run, conditions, x_T: np.ndarray, key, strategy, *, chunk: int,  # noqa: N803
            cache: str, name: str) -> tuple[np.ndarray, np.ndarray, float, int]:
  """One guidance strategy on every noise, in cached chunks named `name`: (samples,
  transition_step [N], seconds, chunks sampled now)."""
  from minidiff.core import samplers
  o = run.options

  def fn(params, x, cond, null, k):
    eps_fn = lambda x_t, t, c: run.eps_apply(params, x_t, t, c)  # noqa: E731
    return samplers.sample(eps_fn, run.schedule, x, cond, null, k, strategy=strategy,
                           sampler=o.sampler, num_steps=o.num_steps, eta=o.eta,
                           spacing=o.spacing, clip_x0=o.clip_x0)

  return _sample_arm(fn, run, conditions, x_T, key, name=name, chunk=chunk, cache=cache,
                     meta=_run_meta(run, arm=repr(strategy)))


def _sample_arm(fn, run, conditions, x_T: np.ndarray, key, *, name: str, chunk: int,  # noqa: N803
                cache: str, meta: dict) -> tuple[np.ndarray, np.ndarray, float, int]:
  """Samples the program `fn(params, x, cond, null, k) -> (x0, diagnostics)` on every noise in
  cached chunks: (samples, transition_step [N], seconds, chunks sampled now)."""
  from minidiff.study import sampling
  compiled_for = _compile_once(fn)

  def sample(x, cond, k):
    (out,), _, _ = sampling.sample_in_batches(compiled_for, run.params, x, cond, conditions.null,
                                              k, batch=chunk, mesh=run.mesh)
    return dict(samples=out[0], k_hat=out[1]["transition_step"])

  out, seconds, fresh = sample_chunks(name, sample, x_T, conditions.cond, key, chunk=chunk,
                                      cache=cache, meta=meta, axes=dict(samples=0, k_hat=0))
  return out["samples"], out["k_hat"], seconds, fresh


def _legacy_arm(cache: str, name: str, num: int, use: int
                ) -> tuple[np.ndarray, np.ndarray, float, int] | None:
  """An off-sweep arm as an earlier version kept it, whole, per (--num, --use): (samples, k̂,
  seconds, 0 chunks sampled), or None."""
  path = os.path.join(cache, f"{name}_n{num}_use{use}.npz")
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return f["samples"], f["k_hat"], float(f["seconds"]), 0


def measure_flags(ctx, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(copy, class_correct) flags of samples [..., N, H, W, C] → two [..., N] bool arrays."""
  from minidiff.study import evaluation
  lead = samples.shape[:-3]
  flat = samples.reshape((-1,) + samples.shape[-3:])
  n = len(ctx.conditions)
  reps = flat.shape[0] // n
  big = dataclasses.replace(ctx, conditions=_tile_conditions(ctx.conditions, reps))
  f = evaluation.flags(big, evaluation.measure(big, flat))
  if "class_correct" not in f:
    raise ValueError("No evaluation classifier: class accuracy (the alignment axis) cannot be "
                     "measured; prepare the offline dataset so that the classifier can be trained.")
  return f["copy"].reshape(lead), f["class_correct"].reshape(lead)


def _first_rows(tree, n: int):
  """The first n rows of every leaf of a pytree."""
  import jax
  return jax.tree.map(lambda a: np.asarray(a)[:n], tree)


def _first(c, n: int):
  """The first n rows of a condition set."""
  return dataclasses.replace(c, cond=_first_rows(c.cond, n),
                             requested_class=c.requested_class[:n], target_image=c.target_image[:n],
                             named_images=None if c.named_images is None else c.named_images[:n],
                             groups={k: v[:n] for k, v in c.groups.items()},
                             prompts=None if c.prompts is None else tuple(c.prompts[:n]))


def _tile_conditions(c, reps: int):
  tile = lambda a: np.tile(np.asarray(a), (reps,) + (1,) * (np.ndim(a) - 1))  # noqa: E731
  return dataclasses.replace(c, requested_class=tile(c.requested_class),
                             target_image=tile(c.target_image),
                             named_images=None if c.named_images is None else tile(c.named_images),
                             groups={k: tile(v) for k, v in c.groups.items()},
                             prompts=None if c.prompts is None else tuple(c.prompts) * reps)


# --- the study ----------------------------------------------------------------------------------


def study(workdir: str, *, num: int, w_pre: float, w_post: float, two_pass_s: Sequence[float],
          dynamic_w_pre: float | None, outdir: str, cache: str, chunk: int, seed: int = 0,
          use: int | None = None, tolerance: float = 0.03, classifier_cache: str | None = None,
          command: str = "") -> dict[str, Any]:
  """Runs the sweep, the detectors and the off-sweep arms on `workdir`; writes `outdir`.

  The noises are the first `use` (default: all) of the `num` shared noises, so a study cut short
  for time reuses the chunks a longer one sampled.
  """
  use = num if use is None else use
  if not 1 <= use <= num or use % chunk and use != num:
    raise ValueError(f"--use={use} must lie in [1, --num={num}] and be a multiple of --chunk="
                     f"{chunk} (or equal --num).")
  from minidiff import config as config_lib
  from minidiff.core import guidance
  from minidiff.data import tokenizer as tokenizer_lib
  from minidiff.metrics import classifier as classifier_lib
  from minidiff.study import arms as arms_lib
  from minidiff.study import conditions as conditions_lib
  from minidiff.study import evaluation, sampling
  from minidiff.train import inputs, sharding

  t_start = time.perf_counter()
  config, eps_apply, params, schedule, null_id, step = sampling.load_sampling_model(workdir)
  subset = inputs.load_training_data(config)
  # The alignment axis first: a missing classifier or dataset fails before anything is sampled.
  clf = classifier_lib.load_or_train_classifier(
      resolution=config.data.resolution, dataset=config.data.name, seed=0,
      cache_dir=classifier_cache,
      settings=classifier_lib.TrainSettings(epochs=config.study.get("classifier_epochs", 15)))
  manifest = subset.manifest
  if config_lib.is_text(config):
    tokenizer = tokenizer_lib.Tokenizer.load(os.path.join(workdir, tokenizer_lib.FILENAME))
    prompts = [manifest.captions[u] for u in manifest.duplicated_ids]
    conditions = conditions_lib.prompt_conditions(manifest, tokenizer, dataset=config.data.name,
                                                  num=num, prompts=prompts)
    if not prompts:
      raise ValueError(f"{workdir}: the run has no duplicated image with a unique caption, so no "
                       f"memorized prompt to study; train with data.num_duplicated_per_class ≥ 1.")
    what = f"the {len(prompts)} memorized caption{'s' if len(prompts) > 1 else ''}, cycled"
    alignment_def = "the evaluation classifier's class is that of the image the caption names"
  else:
    mem = conditions_lib.memorized_classes(manifest)
    conditions = conditions_lib.class_conditions(
        manifest, num=num, num_classes=config_lib.unet_config(config).num_classes,
        null_id=null_id, classes=tuple(int(c) for c in mem))
    what = f"memorized classes {mem.tolist()}, alternating"
    alignment_def = ALIGNMENT_DEF
  options = sampling.options_from_config(config, num=num, seed=seed, batch=chunk)
  shape = (config.data.resolution, config.data.resolution, config.data.channels)
  x_T, key = sampling.shared_noise(options, shape=shape)  # noqa: N806
  run = arms_lib.SamplerRun(eps_apply, params, schedule, options, sharding.mesh_from_config(config))
  sweep = run_sweep(run, conditions, x_T, key, w_pre=w_pre, w_post=w_post, chunk=chunk,
                    cache=cache, use=use)
  if use < num:  # the study runs on the first `use` noises and their conditions
    x_T = x_T[:use]  # noqa: N806
    conditions = _first(conditions, use)
  ctx = evaluation.calibrated_context(conditions, subset.unique_images, manifest.label,
                                      manifest.is_duplicated, inputs.heldout_data(config, manifest),
                                      classifier=clf)
  copied, correct = measure_flags(ctx, sweep.samples)
  out = Outcomes(steps=sweep.steps, t=sweep.t, copied=copied, correct=correct)
  rules = default_detectors(w_pre=w_pre, w_post=w_post)
  k_hat = fire_all(rules, sweep.d_eps, sweep.d_x0, sweep.t, schedule)
  extra, timing = {}, dict(sweep_s=sweep.sample_s)
  chunks = dict(sweep=sweep.sampled_chunks)
  for s in two_pass_s:
    samples, kh, sec, fresh = _legacy_arm(cache, f"two_pass_s{s:g}_w{w_post:g}", num, use) or (
        run_two_pass(run, conditions, x_T, key, s=s, w_post=w_post, chunk=chunk, cache=cache))
    c, a = measure_flags(ctx, samples)
    extra[f"two_pass_s{s:g}"] = (c, a, kh, -s == w_pre)
    timing[f"two_pass_s{s:g}_s"] = sec
    chunks[f"two_pass_s{s:g}"] = fresh
  if dynamic_w_pre is not None:
    strategy = guidance.DynamicTransition(w_pre=dynamic_w_pre, w_post=w_post)
    name = f"dynamic_w{dynamic_w_pre:g}_w{w_post:g}"
    samples, kh, sec, fresh = _legacy_arm(cache, name, num, use) or (
        run_arm(run, conditions, x_T, key, strategy, chunk=chunk, cache=cache, name=name))
    c, a = measure_flags(ctx, samples)
    extra[f"authors_dynamic_w_pre{dynamic_w_pre:g}"] = (c, a, kh, dynamic_w_pre == w_pre)
    timing["authors_dynamic_s"] = sec
    chunks["authors_dynamic"] = fresh
  results = analyse(out, k_hat, extra=extra, tolerance=tolerance)
  results.update(
      command=command, workdir=workdir, checkpoint_step=int(step), kind=conditions.kind,
      conditions=what, alignment_def=alignment_def, w_pre=w_pre, w_post=w_post,
      sampler=dict(sampler=options.sampler, num_steps=options.num_steps, eta=options.eta,
                   spacing=options.spacing, clip_x0=options.clip_x0, seed=seed),
      rules={name: repr(r) for name, r in rules.items()}, timing=timing,
      sampled_chunks=chunks,
      wall_s=time.perf_counter() - t_start)
  write(results, outdir)
  return results


# --- writing --------------------------------------------------------------------------------------


def _pct(r: dict) -> str:
  return f"{100 * r['rate']:.1f}% [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]"


def _diff(d: dict | None) -> str:
  from minidiff.metrics import stats
  if not d:
    return "—"
  sign = lambda x: f"{100 * x:+.1f}".replace("-", stats.MINUS)  # noqa: E731
  return f"{sign(d['diff'])} [{sign(d['ci'][0])}, {sign(d['ci'][1])}] {stats.format_p(d['p'])}"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
  return "—" if v is None else fmt.format(v)


def render(r: dict) -> str:
  """The Markdown write-up of one `analyse` result (with its run's metadata)."""
  bt = r["best_tau"]
  lines = [
      f"# Per-sample transitions: {r.get('workdir', '')}", "",
      f"Command: `{r.get('command', '')}`", "",
      f"{r['n']} initial noises ({r.get('conditions', '')}); {r['sampler']['sampler']}-"
      f"{r['num_steps']}, {r['sampler']['spacing']} spacing; static switches w_pre = "
      f"{r['w_pre']:g} → w_post = {r['w_post']:g} at every step k = 0 … {r['num_steps']} "
      f"(k = {r['num_steps']}: never). Copy = {r.get('copy_def', COPY_DEF)}; alignment = "
      f"{r.get('alignment_def', ALIGNMENT_DEF)}. Wall time "
      f"{r['wall_s']:.0f} s (sweep {r['timing']['sweep_s']:.0f} s).", "",
      "## The true transition k*", "",
      f"k* = the earliest step whose switch does not end as a copy. Median k* = "
      f"{_num(r['k_star_median'], '{:.0f}')}; no safe step at all for {100 * r['k_star_none']:.1f}% "
      f"of noises; copy(k) monotone for {100 * r['monotone']:.1f}% of noises.", "",
      "![k* histogram](k_star.png)", "",
      "## Oracle frontier beside static τ", "",
      f"Reference alignment: CFG from step 0, {100 * r['reference']['alignment']:.1f}%. Best "
      f"single τ (least copying with alignment ≥ reference − {100 * r['reference']['tolerance']:.0f}"
      f" points): step {bt['step']} (t = {bt['t']}), copy {_pct(bt['copy'])}, alignment "
      f"{_pct(bt['alignment'])}.", "",
      "| switch | copy | alignment | Δcopy vs best τ (pts) | Δalign. vs best τ (pts) |",
      "|---|---|---|---|---|"]
  for o in r["oracle"]:
    lines.append(f"| oracle k*+{o['j']} | {_pct(o['copy'])} | {_pct(o['alignment'])} | "
                 f"{_diff(o['vs_best_tau']['copy'])} | {_diff(o['vs_best_tau']['alignment'])} |")
  ob = r.get("oracle_best")
  if ob:
    lines.append(f"| oracle, best switch per noise (earliest step that neither copies nor loses "
                 f"the class) | {_pct(ob['copy'])} | {_pct(ob['alignment'])} | "
                 f"{_diff(ob['vs_best_tau']['copy'])} | {_diff(ob['vs_best_tau']['alignment'])} |")
    kc = ob.get("keep_class")
    if kc:
      lines.append(f"| oracle keeping the class (that step, else CFG from step 0) | "
                   f"{_pct(kc['copy'])} | {_pct(kc['alignment'])} | "
                   f"{_diff(kc['vs_best_tau']['copy'])} | {_diff(kc['vs_best_tau']['alignment'])} |")
  lines += ["", "![frontier](frontier.png)", "", "## Detectors scored against k*", "",
            "k̂ − k* over noises where both exist; never = the rule never fires (no guidance). "
            "Frontier point = the sample of switching at k̂ (exact: same trajectory until k̂). "
            "Matched τ = the least-copying static switch at least as aligned as the rule.", "",
            "| rule | median k̂−k* | IQR | within ±2 | never | t̂ median | copy | alignment | "
            "Δcopy vs best τ | Δcopy vs matched τ (step) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for name, d in r["detectors"].items():
    g = d["lag"]
    m = d["vs_matched_tau"]
    lines.append(
        f"| `{name}` | {_num(g['median'], '{:+.0f}')} | {_num(g['q25'], '{:.0f}')}…"
        f"{_num(g['q75'], '{:.0f}')} | {_num(g['within'] and 100 * g['within'], '{:.0f}%')} | "
        f"{100 * g['never_fired']:.0f}% | {_num(d['fired_t_median'], '{:.0f}')} | "
        f"{_pct(d['copy'])} | {_pct(d['alignment'])} | {_diff(d['vs_best_tau']['copy'])} | "
        f"{_diff(m and m['copy'])} ({m['step'] if m else '—'}) |")
  if r["extra"]:
    lines += ["", "## Arms sampled on their own (same noises)", "",
              "k̂ − k* only for an arm whose w before k̂ is the sweep's w_pre.", "",
              "| arm | fired | median k̂−k* (IQR, within ±2) | copy | alignment | Δcopy vs best τ | "
              "Δalign. vs best τ | Δcopy vs matched τ (step) |", "|---|---|---|---|---|---|---|---|"]
    for name, d in r["extra"].items():
      m, g = d["vs_matched_tau"], d.get("lag")
      lag = "—" if not g or g["median"] is None else (
          f"{g['median']:+.0f} ({g['q25']:.0f}…{g['q75']:.0f}, {100 * g['within']:.0f}%)")
      lines.append(f"| `{name}` | {_num(d['fired'] and 100 * d['fired'], '{:.0f}%')} | {lag} | "
                   f"{_pct(d['copy'])} | {_pct(d['alignment'])} | {_diff(d['vs_best_tau']['copy'])} | "
                   f"{_diff(d['vs_best_tau']['alignment'])} | {_diff(m and m['copy'])} "
                   f"({m['step'] if m else '—'}) |")
  h = r.get("held_out")
  if h and h.get("rule"):
    lines += ["", "## Held-out check", "",
              f"Chosen on the even noises: rule `{h['rule']}` and best τ step {h['tau_step']}; "
              f"on the {h['n']} odd noises the rule minus τ is copy {_diff(h['copy'])}, "
              f"alignment {_diff(h['alignment'])}."]
  return "\n".join(lines) + "\n"


def plot(r: dict, outdir: str) -> None:
  """k_star.png (histogram + copy/alignment curves) and frontier.png."""
  from minidiff.study import plots
  import matplotlib.pyplot as plt
  S = r["num_steps"]  # noqa: N806
  ks = np.asarray(r["k_star"])
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
  a1.hist(ks[ks >= 0], bins=np.arange(-0.5, S + 1.5, 1), color="tab:blue")
  a1.set_xlabel("k* (step of the earliest switch that does not copy)")
  a1.set_ylabel("noises")
  a1.set_title(f"k*: median {_num(r['k_star_median'], '{:.0f}')}, none {100 * r['k_star_none']:.0f}%, "
               f"monotone {100 * r['monotone']:.0f}%", fontsize=9)
  a2.plot(r["steps"], r["copy_curve"], label="copy rate", color="tab:red")
  a2.plot(r["steps"], r["alignment_curve"], label="alignment", color="tab:green")
  a2.set_xlabel("switch step k (static τ = t_k)")
  a2.legend(fontsize=8)
  plots.save_figure(fig, os.path.join(outdir, "k_star.png"))
  fig, ax = plt.subplots(figsize=(7, 5))
  sx = [p["alignment"]["rate"] for p in r["static"]]
  sy = [p["copy"]["rate"] for p in r["static"]]
  ax.plot(sx, sy, "-o", ms=3, color="0.5", label="static τ (every step)")
  for p in r["static"][::10]:
    ax.annotate(f"k={p['step']}", (p["alignment"]["rate"], p["copy"]["rate"]), fontsize=7)
  ox = [o["alignment"]["rate"] for o in r["oracle"]]
  oy = [o["copy"]["rate"] for o in r["oracle"]]
  ax.plot(ox, oy, "-s", color="tab:blue", label="oracle k*+j")
  if r.get("oracle_best"):
    ob = r["oracle_best"]
    ax.plot(ob["alignment"]["rate"], ob["copy"]["rate"], "*", ms=12, color="tab:blue",
            label="oracle, best switch per noise")
    if ob.get("keep_class"):
      kc = ob["keep_class"]
      ax.plot(kc["alignment"]["rate"], kc["copy"]["rate"], "P", ms=10, color="tab:blue",
              label="oracle keeping the class")
  for o in r["oracle"]:
    ax.annotate(f"+{o['j']}", (o["alignment"]["rate"], o["copy"]["rate"]), fontsize=7,
                color="tab:blue")
  for name, d in list(r["detectors"].items()) + list(r["extra"].items()):
    marker = "^" if name in r["extra"] else "x"
    ax.plot(d["alignment"]["rate"], d["copy"]["rate"], marker, color="tab:red", ms=6)
    ax.annotate(name, (d["alignment"]["rate"], d["copy"]["rate"]), fontsize=6, color="tab:red")
  ax.set_xlabel("alignment (class accuracy)")
  ax.set_ylabel("copy rate")
  ax.set_title("Oracle frontier beside static τ; detectors (x), off-sweep arms (^)", fontsize=9)
  ax.legend(fontsize=8)
  plots.save_figure(fig, os.path.join(outdir, "frontier.png"))


def write(r: dict, outdir: str) -> None:
  """results.json, report.md, k_star.png and frontier.png in outdir."""
  os.makedirs(outdir, exist_ok=True)
  with open(os.path.join(outdir, "results.json"), "w") as f:
    json.dump(r, f, indent=1)
  with open(os.path.join(outdir, "report.md"), "w") as f:
    f.write(render(r))
  plot(r, outdir)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a trained run (config.json + checkpoints)")
  p.add_argument("--num", type=int, default=200, help="initial noises, on memorized conditions")
  p.add_argument("--w_pre", type=float, default=0.0, help="w before the switch (−s: opposite)")
  p.add_argument("--w_post", type=float, default=7.5)
  p.add_argument("--two_pass_s", type=float, nargs="*", default=[7.5],
                 help="opposite-guidance scales s of the authors' two-pass rule arms")
  p.add_argument("--dynamic_w_pre", type=float, default=1.0,
                 help="w_pre of the authors' dynamic rule arm (their script: 1); nan: skip it")
  p.add_argument("--outdir", required=True)
  p.add_argument("--cache", default=None, help="where sampled chunks are kept (default OUTDIR/cache)")
  p.add_argument("--chunk", type=int, default=50, help="noises per sampled chunk")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--use", type=int, default=None,
                 help="study only the first USE of the --num noises (a multiple of --chunk)")
  a = p.parse_args(argv)
  if a.num < 1 or a.chunk < 1:
    p.error(f"--num={a.num} and --chunk={a.chunk} must be ≥ 1.")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  study(a.workdir, num=a.num, w_pre=a.w_pre, w_post=a.w_post, two_pass_s=a.two_pass_s,
        dynamic_w_pre=None if np.isnan(a.dynamic_w_pre) else a.dynamic_w_pre, outdir=a.outdir,
        cache=a.cache or os.path.join(a.outdir, "cache"), chunk=a.chunk, seed=a.seed, use=a.use,
        command="python scripts/transitions.py " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv))
  return 0


if __name__ == "__main__":
  sys.exit(main())  # scripts/transitions.py does the same after runtime.configure_cpu()
