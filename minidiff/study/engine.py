"""The study engine: every arm on the same noises and conditions, over one or several training seeds.

  run_study(["runs/mnist_dup"], "none,conditional,cfg:w=1.5,3,7.5,static:tau=200:800:100")

For each workdir (same config, different `seed`): load its EMA model, build the condition set
(class or text), sample every arm on the shared initial noises and keys (static transitions that
differ only in τ share their start), measure every registered metric per sample, and keep the
per-sample flags. `minidiff.study.summary` then pairs each arm with the baseline arm, pools the
seeds and extracts the memorization–alignment frontier; `minidiff.study.report` writes report.md.
Results land in their own folder and are never overwritten: a folder holding another study gets
a new name; the same study resumes from the arms it has already sampled.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from minidiff import config as config_lib
from minidiff.data import tokenizer as tokenizer_lib
from minidiff.data.duplication import Manifest
from minidiff.metrics import classifier as classifier_lib
from minidiff.metrics import memorization
from minidiff.study import arms as arms_lib
from minidiff.study import conditions as conditions_lib
from minidiff.study import evaluation, figures, report, sampling, summary
from minidiff.train import inputs, sharding

log = logging.getLogger(__name__)
RESULTS_VERSION = 2
CLASSIFIER_SEED = 0  # one evaluator for every training seed of a study


@dataclasses.dataclass(frozen=True)
class StudyOptions:
  """Everything about a study but the workdirs and the arms."""

  sampling: sampling.SamplingOptions
  memorized_share: float = 0.5  # class studies: share of samples on memorized classes
  memorized_classes: tuple[int, ...] = ()  # class studies: override (e.g. a control model trained
  #   without duplication is studied on the classes that are memorized in the duplicated run)
  prompts: tuple[str, ...] = ()  # text studies: prompts (default: memorized and class prompts)
  baseline: str | None = None  # the arm every arm is paired with (default: the largest-w cfg arm)
  tolerance: float = 0.03  # frontier: alignment within this of the best CFG arm
  classifier_cache: str | None = None
  fd_resamples: int = 200  # bootstrap resamples of each FD interval
  figures: bool = True  # per-arm grids and copy pairs (the frontier plot is always drawn)


def _check_same_config(configs: Sequence[Any], workdirs: Sequence[str]) -> None:
  first = config_lib.flatten(configs[0])
  for c, w in zip(configs[1:], workdirs[1:]):
    other = config_lib.flatten(c)
    diffs = sorted(k for k in set(first) | set(other) if k != "seed" and first.get(k) != other.get(k)
                   and not config_lib.is_resumable(k))
    if diffs:
      raise ValueError(f"--workdirs must be training seeds of one config, but {w} differs from "
                       f"{workdirs[0]} in {', '.join(diffs[:5])}; study them separately.")


def _outdir(requested: str | None, workdirs: Sequence[str], identity: dict) -> str:
  """The study's folder: the requested / default one, or — if that holds another study — the
  first free `<folder>_2`, `_3`, … (a study is never overwritten)."""
  if requested:
    base = requested
  elif len(workdirs) == 1:
    base = os.path.join(workdirs[0], "study")
  else:
    base = os.path.join(os.path.dirname(os.path.abspath(workdirs[0])),
                        os.path.basename(os.path.normpath(workdirs[0])) + "_seeds_study")
  candidate, n = base, 1
  while True:
    path = os.path.join(candidate, "identity.json")
    if not os.path.exists(candidate) or not os.listdir(candidate):
      break
    if os.path.exists(path):
      with open(path) as f:
        if json.load(f) == identity:
          return candidate  # the same study: resume
    n += 1
    candidate = f"{base}_{n}"
  if candidate != base:
    log.warning("%s holds another study (other arms, options or workdirs); writing to %s instead.",
                base, candidate)
  return candidate


def run_study(workdirs: Sequence[str], arm_specs: str | Sequence[str] | None = None, *,
              options: StudyOptions, overrides: dict[str, str] | None = None,
              outdir: str | None = None, command: str | None = None) -> dict:
  """Runs the study over `workdirs` (training seeds of one config) and writes its folder.

  Returns the results dict (results.json's content). Everything is validated — configs, arms,
  sampling options, prompts — before anything is compiled.
  """
  workdirs = list(workdirs)
  if not workdirs:
    raise ValueError("No workdir given: pass --workdir W (or --workdirs W1,W2,W3 for seeds).")
  configs = [config_lib.load_workdir_config(w) for w in workdirs]
  for c in configs:
    config_lib.validate_config(c)
  _check_same_config(configs, workdirs)
  config = configs[0]
  text = config_lib.is_text(config)
  arm_list = arms_lib.parse_arms(arm_specs or config.study.guidance, T=config.diffusion.T,
                                 overrides=overrides, text_conditions=text)
  num_classes = config_lib.unet_config(config).num_classes
  options.sampling.validate(config.diffusion.T, num_classes)
  baseline = summary.choose_baseline([(a.label, a.family, a.strategy) for a in arm_list],
                                     options.baseline)
  # What the samples depend on (analysis-only options such as the baseline or the tolerance are
  # recomputed from the flags and may change on a resumed study); as JSON would read it back.
  sampled = {k: v for k, v in _jsonable(options).items()
             if k not in ("baseline", "tolerance", "figures", "fd_resamples")}
  identity = json.loads(json.dumps(dict(version=RESULTS_VERSION,
                                        workdirs=[os.path.abspath(w) for w in workdirs],
                                        arms=[a.label for a in arm_list], options=sampled)))
  outdir = _outdir(outdir, workdirs, identity)
  os.makedirs(outdir, exist_ok=True)
  with open(os.path.join(outdir, "identity.json"), "w") as f:
    json.dump(identity, f, indent=2)
  t_start = time.perf_counter()
  seeds = []
  compiled_cache: dict = {}  # the seeds share one architecture: compile each strategy once
  for i, workdir in enumerate(workdirs):
    log.info("Seed %d/%d: %s (config.seed=%d), %d arms × %d samples.", i + 1, len(workdirs),
             workdir, configs[i].seed, len(arm_list), options.sampling.num)
    seeds.append(_study_one(workdir, arm_list, options, os.path.join(outdir, f"seed_{i}"),
                            compiled_cache))
  results = dict(version=RESULTS_VERSION, kind="text" if text else "class",
                 command=command or " ".join(sys.argv), workdirs=workdirs,
                 options=_jsonable(options), baseline=baseline,
                 arms=[dict(label=a.label, family=a.family, strategy=repr(a.strategy),
                            perturbation=repr(a.perturbation) if a.perturbation else None)
                       for a in arm_list],
                 metrics={k: m.description for k, m in evaluation.METRICS.items()},
                 seeds=seeds, wall_s=time.perf_counter() - t_start)
  results["summary"] = summary.summarize(results, tolerance=options.tolerance)
  path = os.path.join(outdir, "results.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)
  report.write(results, outdir)
  log.info("Study written to %s (results.json, report.md, figures) in %.0f s.", outdir,
           time.perf_counter() - t_start)
  return results


def _jsonable(options: StudyOptions) -> dict:
  d = dataclasses.asdict(options)
  d.pop("classifier_cache")
  if d["sampling"]["step"] is None:  # the latest checkpoint: as before `step` existed
    d["sampling"].pop("step")
  d["prompts"] = list(d["prompts"])
  return d


def _conditions(config, workdir: str, manifest: Manifest, options: StudyOptions, null_id: int):
  num = options.sampling.num
  if config_lib.is_text(config):
    tokenizer = tokenizer_lib.Tokenizer.load(os.path.join(workdir, tokenizer_lib.FILENAME))
    unknown = sorted({w for p in set(options.prompts) for w in tokenizer.unknown_words(p)})
    if unknown:
      log.warning("Words not in the training vocabulary (encoded as <unk>): %s", ", ".join(unknown))
    return conditions_lib.prompt_conditions(manifest, tokenizer, dataset=config.data.name, num=num,
                                            prompts=options.prompts), tokenizer
  return conditions_lib.class_conditions(
      manifest, num=num, num_classes=config_lib.unet_config(config).num_classes, null_id=null_id,
      classes=options.sampling.classes, memorized_share=options.memorized_share,
      memorized=options.memorized_classes or None), None


def _classifier(config, options: StudyOptions):
  try:
    return classifier_lib.load_or_train_classifier(
        resolution=config.data.resolution, cache_dir=options.classifier_cache,
        dataset=config.data.name, seed=CLASSIFIER_SEED,
        settings=classifier_lib.TrainSettings(epochs=config.study.get("classifier_epochs", 15)))
  except (FileNotFoundError, ValueError) as e:  # e.g. a tfds dataset that is not prepared here
    log.warning("No evaluation classifier (%s): class accuracy and FD are left out.", e)
    return None


def _study_one(workdir: str, arm_list: Sequence[arms_lib.Arm], options: StudyOptions,
               outdir: str, compiled_cache: dict) -> dict:
  """One training seed: sample (or reuse) every arm, measure, return the seed's JSON block."""
  config, eps_apply, params, schedule, null_id, step = sampling.load_sampling_model(
      workdir, step=options.sampling.step)
  subset = inputs.load_training_data(config)
  manifest = subset.manifest
  conditions, tokenizer = _conditions(config, workdir, manifest, options, null_id)
  shape = (config.data.resolution, config.data.resolution, config.data.channels)
  x_T, key = sampling.shared_noise(options.sampling, shape=shape)  # noqa: N806
  run = arms_lib.SamplerRun(eps_apply, params, schedule, options.sampling,
                            sharding.mesh_from_config(config),
                            **arms_lib.mitigation_inputs(arm_list, config, subset.unique_images))
  arm_conditions = {a.label: conditions_lib.perturb(
      conditions, a.perturbation, tokenizer=tokenizer, text_dim=config_lib.unet_config(config).text_dim,
      seed=options.sampling.seed) for a in arm_list}
  os.makedirs(outdir, exist_ok=True)
  results: dict[str, sampling.SampleResult] = {}
  families = arms_lib.switch_families(arm_list, x0_steps=options.sampling.x0_steps)
  done = 0
  for family in families:
    metas = {a.label: sampling.result_meta(a.label, repr(a.strategy), repr(a.perturbation),
                                        options.sampling, step) for a in family}
    paths = {a.label: os.path.join(outdir, f"{a.slug}.npz") for a in family}
    todo = []
    for a in family:
      cached = sampling.load_result(paths[a.label], metas[a.label])
      if cached is None:
        todo.append(a)
      else:
        results[a.label] = cached
    if todo:
      t0 = time.perf_counter()
      if len(todo) > 1:
        fresh = arms_lib.run_switch_family(run, todo, arm_conditions[todo[0].label], x_T, key)
      else:
        fresh = {todo[0].label: arms_lib.run_arm(run, todo[0], arm_conditions[todo[0].label], x_T,
                                                 key, compiled_cache=compiled_cache)}
      for a in todo:
        sampling.save_npz(fresh[a.label], paths[a.label], metas[a.label])
        results[a.label] = fresh[a.label]
      log.info("%s: %d samples in %.1f s.", ", ".join(a.label for a in todo),
               len(conditions) * len(todo), time.perf_counter() - t0)
    done += len(family)
    log.info("Arms sampled: %d/%d%s.", done, len(arm_list),
             f" (reused {len(family) - len(todo)})" if len(todo) < len(family) else "")
  log.info("Measuring the samples (nearest neighbours, classifier).")
  clf = _classifier(config, options)
  reference, pool = (classifier_lib.clean_reference(clf, exclude=manifest.source_index)
                     if clf is not None else (None, None))
  near = memorization.near_duplicates(subset.unique_images)
  heldout = inputs.heldout_data(config, manifest)
  ctx = evaluation.calibrated_context(conditions, subset.unique_images, manifest.label,
                                      manifest.is_duplicated, heldout, classifier=clf,
                                      fd_reference=reference)
  arms_out = {}
  for a in arm_list:
    arms_out[a.label] = evaluate_arm(ctx, dataclasses.replace(ctx, conditions=arm_conditions[a.label]),
                                     results[a.label], seed=options.sampling.seed,
                                     fd_resamples=options.fd_resamples)
    sampling.attach_measurements(os.path.join(outdir, f"{a.slug}.npz"), arms_out[a.label])
  figs = (figures.arm_figures(outdir, arm_list, results, arm_conditions, subset.unique_images,
                              ctx.conditions, arms_out) if options.figures else {})
  ema = config.train.ema_decay
  seed_block = dict(
      workdir=workdir, seed=int(config.seed), checkpoint_step=int(step),
      ema=dict(decay=float(ema), effective_decay=float(min(ema, (1 + step) / (10 + step))),
               note="EMA decay is min(decay, (1+step)/(10+step)) (warm-up); effective value at "
                    "the checkpoint step"),
      data=dict(name=config.data.name, resolution=int(config.data.resolution),
                n_unique=int(len(manifest.label)), n_duplicated=int(manifest.is_duplicated.sum()),
                dup_factor=int(config.data.dup_factor), n_train=int(len(manifest.unique_id)),
                duplicated_ids=manifest.duplicated_ids.tolist(),
                near_duplicate_pairs=int(len(near)),
                memorized_classes=conditions_lib.memorized_classes(manifest).tolist()),
      conditions=conditions.describe(), arms=arms_out, figures=figs,
      copy_calibration=dict(ctx.calibration.to_json(), n_heldout=int(len(heldout[1]))),
      applies=evaluation.applies_masks(ctx))
  if clf is not None:
    seed_block["classifier"] = dict(seed=CLASSIFIER_SEED, heldout_accuracy=clf.heldout_accuracy,
                                    n_heldout=int(len(clf.heldout_labels)))
    if reference is not None and pool is not None:
      seed_block["fd_floor"] = evaluation.frechet_floor(pool, reference, n=len(conditions),
                                                        seed=options.sampling.seed)
  return seed_block


def evaluate_arm(ctx: evaluation.Context, arm_ctx: evaluation.Context,
                 result: sampling.SampleResult, *, seed: int, fd_resamples: int) -> dict:
  """One arm's results.json row: every registered metric's flags and per-group rates (measured
  under the arm's own, possibly perturbed, conditions `arm_ctx`), the per-sample scores, the
  detection block of the registered arm scores, and FD when `ctx` has a reference."""
  measured = evaluation.measure(arm_ctx, result.samples)
  flags = evaluation.flags(arm_ctx, measured)
  fired = result.transition_step >= 0
  t_fired = result.t[result.transition_step[fired]] if fired.any() else np.zeros(0)
  row = dict(
      groups=evaluation.group_rates(arm_ctx, flags),
      flags={k: "".join("1" if v else "0" for v in f) for k, f in flags.items()},
      nn_index=measured.memorization.nn_index[:, 0].tolist(),
      scores=evaluation.per_sample_scores(measured),
      transition=dict(fired=float(fired.mean()),
                      t_mean=float(t_fired.mean()) if fired.any() else None,
                      t_std=float(t_fired.std()) if fired.any() else None),
      detection=evaluation.detection(ctx, result.d_eps, result.d_x0, flags),
      samples_per_s=result.samples_per_s, compile_s=result.compile_s)
  if measured.features is not None and ctx.fd_reference is not None:
    row["fd"] = evaluation.frechet_with_interval(measured.features, ctx.fd_reference, seed=seed,
                                                 num_resamples=fd_resamples)
  return row


def sample_and_study(workdirs: str | Sequence[str], arm_specs: str | None = None, *,
                     overrides: dict[str, str] | None = None, num: int | None = None,
                     classes: tuple[int, ...] = (), prompts: Sequence[str] = (),
                     num_steps: int | None = None, eta: float | None = None,
                     sampler: str | None = None, spacing: str | None = None, seed: int = 0,
                     batch: int = 200, x0_steps: tuple[int, ...] = (), step: int | None = None,
                     baseline: str | None = None,
                     memorized_share: float = 0.5, memorized_classes: tuple[int, ...] = (),
                     tolerance: float = 0.03,
                     outdir: str | None = None, classifier_cache: str | None = None,
                     command: str | None = None) -> dict:
  """sample.py's job: options from the first workdir's config (None = the config's value), then
  `run_study`. Raises ValueError / FileNotFoundError with one clear line before any compile."""
  workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
  if not workdirs:
    raise ValueError("No workdir given: pass --workdir W (or --workdirs W1,W2,W3 for seeds).")
  config = config_lib.load_workdir_config(workdirs[0])
  text = config_lib.is_text(config)
  if text and classes:
    raise ValueError("This run is text-conditioned: give --prompt / --prompts instead of --classes.")
  if prompts and not text:
    raise ValueError("This run is class-conditional: give --classes, not --prompt / --prompts.")
  num = config.study.num_samples if num is None else num  # --num 0 is an error, not the default
  sampling_options = sampling.options_from_config(
      config, num=num, classes=tuple(classes), num_steps=num_steps, eta=eta, sampler=sampler,
      spacing=spacing, seed=seed, batch=batch, x0_steps=tuple(x0_steps), step=step)
  options = StudyOptions(sampling=sampling_options, memorized_share=memorized_share,
                         memorized_classes=tuple(memorized_classes),
                         prompts=tuple(prompts), baseline=baseline, tolerance=tolerance,
                         classifier_cache=classifier_cache)
  return run_study(workdirs, arm_specs, options=options, overrides=overrides, outdir=outdir,
                   command=command)
