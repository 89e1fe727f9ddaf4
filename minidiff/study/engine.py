"""The sampling job and the memorization study (sample.py's logic).

Every strategy sees the same initial noises, classes and sampler keys. With several strategies the
study measures, per strategy, memorization (ratio test, Carlini, similarity) against the
de-duplicated training set, alignment and quality with the evaluation classifier, the transition
steps and d_t detection AUCs, and writes study/results.json and study/report.md with figures.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

from minidiff import config as config_lib
from minidiff.core import specs as specs_lib
from minidiff.metrics import classifier as classifier_lib
from minidiff.metrics import detection, memorization
from minidiff.study import plots, sampling, text_study
from minidiff.study.report import format_cell
from minidiff.train import inputs

log = logging.getLogger(__name__)
RESULTS_VERSION = 1


def _auc_or_none(scores: np.ndarray, positive: np.ndarray) -> float | None:
  """AUC of `scores` for `positive` vs the rest; None when either group is empty or d is missing."""
  if positive.all() or not positive.any() or not np.isfinite(scores).all():
    return None
  return detection.auc(scores, positive)


def _rate(mask: np.ndarray, where: np.ndarray) -> float | None:
  return float(mask[where].mean()) if where.any() else None


def evaluate_strategy(result: sampling.SampleResult, *, unique_images: np.ndarray,
                      is_duplicated: np.ndarray, duplicated_classes: np.ndarray,
                      classifier: classifier_lib.Classifier | None) -> tuple[dict[str, Any], np.ndarray]:
  """JSON-ready metrics of one strategy's samples, and the per-sample copy flags."""
  mem = memorization.analyse_samples(result.samples, unique_images, is_duplicated)
  summary = memorization.summarize(mem)
  on_dup = np.isin(result.labels, duplicated_classes)
  fired = result.transition_step >= 0
  t_fired = result.t[result.transition_step[fired]] if fired.any() else np.zeros(0)
  mean_d_eps, mean_d_x0 = result.d_eps.mean(axis=0), result.d_x0.mean(axis=0)
  row = dict(
      n_samples=len(result.labels),
      memorization_rate=summary["memorization_rate"],
      memorization_rate_duplicated_conditions=_rate(mem.is_copy, on_dup),
      memorization_rate_other_conditions=_rate(mem.is_copy, ~on_dup),
      copy_rate_of_duplicated_images=summary["copy_rate_duplicated"],
      carlini_fraction_below=summary["carlini_fraction_below"],
      similarity_p95=summary["similarity_at_percentile"],
      similarity_fraction_above_0_5=summary["similarity_fraction_above"],
      copies=summary["copies"],
      transition_fired=float(fired.mean()),
      transition_t_mean=float(t_fired.mean()) if fired.any() else None,
      transition_t_std=float(t_fired.std()) if fired.any() else None,
      auc_mean_d_eps_copies=_auc_or_none(mean_d_eps, mem.is_copy),
      auc_mean_d_x0_copies=_auc_or_none(mean_d_x0, mem.is_copy),
      auc_mean_d_eps_duplicated_conditions=_auc_or_none(mean_d_eps, on_dup),
      auc_mean_d_x0_duplicated_conditions=_auc_or_none(mean_d_x0, on_dup),
      samples_per_s=result.samples_per_s, compile_s=result.compile_s)
  if classifier is not None:
    fd, n_s, n_r = classifier_lib.frechet_to_heldout(classifier, result.samples)
    row.update(class_accuracy=classifier_lib.class_accuracy(classifier, result.samples, result.labels),
               frechet_distance=fd, frechet_n_samples=n_s, frechet_n_reference=n_r)
  return row, mem.is_copy


def write_report(results: dict[str, Any], outdir: str, figures: dict[str, str]) -> str:
  """study/report.md: the table and the figures (paths relative to outdir)."""
  rows = results["strategies"]
  lines = [
      "# Memorization study", "",
      f"Workdir `{results['workdir']}`, checkpoint step {results['checkpoint_step']}; "
      f"{results['n_samples']} samples per strategy from the same initial noises and classes; "
      f"{results['options']['sampler']}-{results['options']['num_steps']} "
      f"(η = {results['options']['eta']}, {results['options']['spacing']} spacing).",
      f"Training set: {results['data']['n_unique']} unique images, duplicated: "
      f"{results['data']['n_duplicated']} (×{results['data']['dup_factor']}) in classes "
      f"{results['data']['duplicated_classes']}. Copy = ratio test ‖x−NN₁‖/‖x−NN₂‖ < 1/3 against "
      f"the de-duplicated set. Class accuracy and Fréchet distance (FD, penultimate features, "
      f"against {results.get('classifier', {}).get('n_reference', '—')} held-out real images) from "
      f"the evaluation classifier (held-out accuracy "
      f"{format_cell(results.get('classifier', {}).get('heldout_accuracy'), True)}).", "",
      "| strategy | memorized | on dup. classes | on other classes | Carlini < 0.5 | sim. p95 | "
      "class acc. | FD | transition t (fired) | AUC d̄_ε copies | samples/s |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    tr = "—" if r["transition_t_mean"] is None else \
        f"{r['transition_t_mean']:.0f} ± {r['transition_t_std']:.0f} ({100 * r['transition_fired']:.0f}%)"
    lines.append(
        f"| `{name}` | {format_cell(r['memorization_rate'], True)} | "
        f"{format_cell(r['memorization_rate_duplicated_conditions'], True)} | "
        f"{format_cell(r['memorization_rate_other_conditions'], True)} | "
        f"{format_cell(r['carlini_fraction_below'].get('0.5'), True)} | {format_cell(r['similarity_p95'])} | "
        f"{format_cell(r.get('class_accuracy'), True)} | {format_cell(r.get('frechet_distance'))} | {tr} | "
        f"{format_cell(r['auc_mean_d_eps_copies'])} | {r['samples_per_s']:.1f} |")
  lines += ["", "## Figures", ""]
  for title, path in figures.items():
    lines += [f"### {title}", "", f"![{title}]({os.path.relpath(path, outdir)})", ""]
  text = "\n".join(lines) + "\n"
  path = os.path.join(outdir, "report.md")
  with open(path, "w") as f:
    f.write(text)
  return path


def sample_and_study(workdir: str, guidance_specs: str | Sequence[str] | None = None, *,
                     overrides: dict[str, str] | None = None, num: int | None = None,
                     classes: tuple[int, ...] = (), num_steps: int | None = None,
                     eta: float | None = None, sampler: str | None = None,
                     spacing: str | None = None, seed: int = 0, batch: int = 200,
                     study: bool | None = None, outdir: str | None = None,
                     classifier_cache: str | None = None, x0_steps: tuple[int, ...] = (),
                     prompts: Sequence[str] = ()) -> dict:
  """Samples `workdir`'s EMA model with each guidance spec; with several (or study=True) runs the study.

  Defaults for the specs and the sample count come from config.study. All inputs are validated
  before anything is compiled. Returns results (the study's results.json content when studying).
  A text-conditioned run samples `prompts` instead of classes (minidiff.study.text_study).
  """
  config = config_lib.load_workdir_config(workdir)
  if config_lib.is_text(config):
    if classes:
      raise ValueError("This run is text-conditioned: give --prompt / --prompts instead of --classes.")
    return text_study.sample_and_study(
        workdir, guidance_specs, prompts=prompts, overrides=overrides, num=num, num_steps=num_steps,
        eta=eta, sampler=sampler, spacing=spacing, seed=seed, batch=batch, study=study, outdir=outdir,
        classifier_cache=classifier_cache, x0_steps=x0_steps)
  if prompts:
    raise ValueError("This run is class-conditional: give --classes, not --prompt / --prompts.")
  num_classes = config_lib.unet_config(config).num_classes
  guidance_specs = guidance_specs or config.study.guidance
  specs = specs_lib.parse_guidance(guidance_specs, T=config.diffusion.T, overrides=overrides)
  num = config.study.num_samples if num is None else num  # --num 0 is an error, not the default
  options = sampling.options_from_config(config, num=num, classes=tuple(classes), num_steps=num_steps,
                                         eta=eta, sampler=sampler, spacing=spacing, seed=seed,
                                         batch=batch, x0_steps=tuple(x0_steps))
  options.validate(config.diffusion.T, num_classes)
  study = len(specs) > 1 if study is None else study
  outdir = outdir or os.path.join(workdir, "study" if study else "samples")
  config, eps_apply, params, schedule, null_id, step = sampling.load_sampling_model(workdir)
  shape = (config.data.resolution, config.data.resolution, config.data.channels)
  x_T, labels, key = sampling.shared_inputs(options, shape=shape, num_classes=num_classes)  # noqa: N806
  t_start = time.perf_counter()
  results = {}
  for spec in specs:
    meta = sampling.result_meta(spec, options, step)
    npz = os.path.join(outdir, f"{spec.slug}.npz")
    result = sampling.load_result(npz, meta)
    if result is not None:  # an interrupted study resumes: finished strategies are reused
      log.info("%s: reusing the samples in %s.", spec.label, npz)
      results[spec.label] = result
      continue
    result = sampling.run_strategy(eps_apply, params, schedule, spec, options, x_T, labels, key,
                                   null_id=null_id)
    paths = sampling.save_result(result, spec, outdir, meta)
    log.info("%s: %d samples in %.1f s (%.1f samples/s; compile %.1f s) → %s", spec.label,
             len(labels), result.sample_s, result.samples_per_s, result.compile_s, paths["npz"])
    results[spec.label] = result
  summary = dict(version=RESULTS_VERSION, workdir=workdir, checkpoint_step=step,
                 n_samples=len(labels), options=dict(options.__dict__))
  if not study:
    summary["strategies"] = {k: dict(samples_per_s=r.samples_per_s, compile_s=r.compile_s,
                                     transition_fired=float((r.transition_step >= 0).mean()))
                             for k, r in results.items()}
    with open(os.path.join(outdir, "sampling.json"), "w") as f:
      json.dump(summary, f, indent=2)
    return summary
  return _study(config, workdir, outdir, specs, results, summary, labels, classifier_cache, t_start)


def _study(config, workdir, outdir, specs, results, summary, labels, classifier_cache, t_start) -> dict:
  subset = inputs.load_training_data(config)
  manifest = subset.manifest
  is_dup = manifest.is_duplicated
  dup_classes = np.unique(manifest.label[is_dup])
  try:
    clf = classifier_lib.load_or_train_classifier(
        resolution=config.data.resolution, cache_dir=classifier_cache, dataset=config.data.name,
        seed=config.seed, settings=classifier_lib.TrainSettings(epochs=config.study.get("classifier_epochs", 15)))
  except (FileNotFoundError, ValueError) as e:  # e.g. a tfds dataset that is not prepared here
    log.warning("No evaluation classifier (%s): class accuracy and FD are left out.", e)
    clf = None
  rows, copies = {}, {}
  for spec in specs:
    rows[spec.label], copies[spec.label] = evaluate_strategy(
        results[spec.label], unique_images=subset.unique_images, is_duplicated=is_dup,
        duplicated_classes=dup_classes, classifier=clf)
  summary.update(
      data=dict(name=config.data.name, resolution=config.data.resolution,
                n_unique=int(len(is_dup)), n_duplicated=int(is_dup.sum()),
                dup_factor=int(config.data.dup_factor), duplicated_classes=dup_classes.tolist(),
                n_train=int(len(manifest.unique_id))),
      strategies=rows, wall_s=time.perf_counter() - t_start)
  if clf is not None:
    summary["classifier"] = dict(heldout_accuracy=clf.heldout_accuracy,
                                 n_reference=int(len(clf.heldout_labels)))
  figures = _figures(outdir, specs, results, copies, labels, dup_classes)
  with open(os.path.join(outdir, "results.json"), "w") as f:
    json.dump(summary, f, indent=2)
  write_report(summary, outdir, figures)
  log.info("Study written to %s (results.json, report.md).", outdir)
  return summary


def _figures(outdir, specs, results, copies, labels, dup_classes) -> dict[str, str]:
  figures = {}
  for spec in specs:
    figures[f"samples: {spec.label}"] = os.path.join(outdir, f"{spec.slug}_grid.png")
  # d_t of memorized vs non-memorized conditions, under the first constant-w CFG strategy.
  ref = next((s for s in specs if s.label.startswith("cfg")), specs[0])
  r = results[ref.label]
  on_dup = np.isin(labels, dup_classes)
  for measure, d in (("eps", r.d_eps), ("x0", r.d_x0)):
    path = os.path.join(outdir, f"dt_{measure}_memorized_vs_not.png")
    plots.plot_d_curves(r.t, d, r.transition_step, path,
                        title=f"{ref.label}: d_t ({measure}-space)",
                        ylabel="‖ε_c − ε_u‖₂" if measure == "eps" else "‖x̂₀_c − x̂₀_u‖₂",
                        groups={"copies": copies[ref.label],
                                "non-copies, duplicated classes": ~copies[ref.label] & on_dup,
                                "non-copies, other classes": ~copies[ref.label] & ~on_dup})
    figures[f"d_t ({measure}-space) of copies vs non-copies under {ref.label}"] = path
  transitions = {s.label: results[s.label].transition_step for s in specs
                 if (results[s.label].transition_step >= 0).any()}
  if transitions:
    path = os.path.join(outdir, "transition_hist.png")
    plots.plot_transition_hist(r.t, transitions, path)
    figures["transition steps"] = path
  return figures
