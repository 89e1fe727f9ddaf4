"""The sampling job and the memorization study (sample.py's logic).

Every strategy sees the same initial noises, classes and sampler keys. With several strategies the
study measures memorization, alignment and quality and writes study/results.json and report.md.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

from minidiff import sampling

log = logging.getLogger(__name__)


def sample_and_study(workdir: str, guidance_specs: str | Sequence[str], *,
                     overrides: dict[str, str] | None = None, num: int = 100,
                     classes: tuple[int, ...] = (), num_steps: int | None = None,
                     eta: float | None = None, sampler: str | None = None,
                     spacing: str | None = None, seed: int = 0, batch: int = 200,
                     study: bool | None = None, outdir: str | None = None) -> dict:
  """Samples `workdir`'s EMA model with each guidance spec; runs the study when asked.

  All inputs are validated before anything is compiled. Returns a summary dict.
  """
  config = sampling.config_lib.load_workdir_config(workdir)
  num_classes = sampling.config_lib.unet_config(config).num_classes
  specs = sampling.parse_guidance(guidance_specs, T=config.diffusion.T, overrides=overrides)
  options = sampling.options_from_config(config, num=num, classes=tuple(classes), num_steps=num_steps,
                                         eta=eta, sampler=sampler, spacing=spacing, seed=seed,
                                         batch=batch)
  options.validate(config.diffusion.T, num_classes)
  study = len(specs) > 1 if study is None else study
  outdir = outdir or os.path.join(workdir, "study" if study else "samples")
  config, eps_apply, params, schedule, null_id, step = sampling.load_sampling_model(workdir)
  shape = (config.data.resolution, config.data.resolution, config.data.channels)
  x_T, labels, key = sampling.shared_inputs(options, shape=shape, num_classes=num_classes)  # noqa: N806
  results = {}
  for spec in specs:
    result = sampling.run_strategy(eps_apply, params, schedule, spec, options, x_T, labels, key,
                                   null_id=null_id)
    paths = sampling.save_result(result, spec, outdir)
    log.info("%s: %d samples in %.1f s (%.1f samples/s; compile %.1f s) → %s", spec.label,
             len(labels), result.sample_s, result.samples_per_s, result.compile_s, paths["npz"])
    results[spec.label] = result
  summary = dict(workdir=workdir, checkpoint_step=step, options=options.__dict__,
                 strategies={k: dict(samples_per_s=r.samples_per_s, compile_s=r.compile_s,
                                     transition_fired=float((r.transition_step >= 0).mean()))
                             for k, r in results.items()})
  with open(os.path.join(outdir, "sampling.json"), "w") as f:
    json.dump(summary, f, indent=2, default=list)
  return summary
