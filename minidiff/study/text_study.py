"""Sampling a text-conditioned run from prompts, and the memorized-vs-non-memorized prompt study.

A spec (minidiff.core.specs.TextSpec) is a guidance strategy (minidiff.core.guidance), optionally
with a prompt perturbation of Somepalli et al. (minidiff.study.perturbation) after a "+": `cfg`,
`static:tau=500`, `cfg+embedding_noise:lam=0.1`, `cfg+random_tokens:k=4`. Every spec samples the same initial noises,
prompts and sampler keys. Without explicit prompts the study samples, half each, the unique
captions of the duplicated training images (memorized prompts, Wen et al. 2024) and class captions
(non-memorized prompts), and reports per spec and per group: copies (ratio test against the
de-duplicated training set), copies of the prompt's own training image, class accuracy, and the
d_t detection AUC between the two groups (Wen et al.: mean over steps of ‖ε_c − ε_u‖, and its first
step alone).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from minidiff import config as config_lib
from minidiff.core import samplers
from minidiff.core import specs as specs_lib
from minidiff.data import captions as captions_lib
from minidiff.data import tokenizer as tokenizer_lib
from minidiff.data.duplication import Manifest
from minidiff.metrics import classifier as classifier_lib
from minidiff.metrics import detection, memorization
from minidiff.study import perturbation, plots, sampling
from minidiff.study.report import format_cell
from minidiff.train import inputs

log = logging.getLogger(__name__)
RESULTS_VERSION = 1
GROUPS = ("memorized", "non_memorized", "other")


def default_prompts(manifest: Manifest, dataset: str, num: int) -> tuple[list[str], np.ndarray]:
  """`num` prompts: the first half cycles over the unique captions of the duplicated images
  (memorized prompts), the second over the class captions, class by class, templates in turn."""
  if manifest.captions is None:
    raise ValueError("The run's manifest.json has no captions: is it a text run?")
  unique = [manifest.captions[u] for u in manifest.duplicated_ids]
  per_class = [captions_lib.class_captions(dataset, c) for c in range(int(manifest.label.max()) + 1)]
  classes = [per_class[c][j] for j in range(len(per_class[0])) for c in range(len(per_class))]
  n_mem = num // 2 if num > 1 else num
  prompts = [unique[i % len(unique)] for i in range(n_mem)] + \
            [classes[i % len(classes)] for i in range(num - n_mem)]
  return prompts, np.asarray([0] * n_mem + [1] * (num - n_mem))


def prompt_groups(prompts: Sequence[str], manifest: Manifest | None, dataset: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per prompt: group (0 memorized = a duplicated image's unique caption, 1 non-memorized = a class
  caption, 2 other), the unique-image id of its training image (−1 if none) and its class (−1)."""
  norm = lambda s: " ".join(tokenizer_lib.words(s))  # noqa: E731
  caption_of = {}
  if manifest is not None and manifest.captions is not None:
    for u in manifest.duplicated_ids:
      caption_of[norm(manifest.captions[u])] = int(u)
  class_of = {norm(c): k for k in range(10) for c in captions_lib.class_captions(dataset, k)}
  group, image, label = [], [], []
  for p in prompts:
    if norm(p) in caption_of:
      u = caption_of[norm(p)]
      group.append(0), image.append(u), label.append(int(manifest.label[u]))
    elif norm(p) in class_of:
      group.append(1), image.append(-1), label.append(class_of[norm(p)])
    else:
      group.append(2), image.append(-1), label.append(-1)
  return np.asarray(group), np.asarray(image), np.asarray(label)


def conditions(spec: specs_lib.TextSpec, prompts: Sequence[str], tokenizer: tokenizer_lib.Tokenizer, *,
               text_dim: int, seed: int) -> tuple[Any, Any, list[str]]:
  """(cond [N, ...], null cond [1, ...], perturbed prompts) of one spec; raises for a too-long prompt."""
  perturbed = perturbation.perturb_prompts(prompts, spec.perturbation, seed=seed,
                                           vocabulary=tokenizer.content_words)
  tokens = tokenizer.encode_batch(perturbed)
  null = tokenizer.null_tokens[None]
  if isinstance(spec.perturbation, specs_lib.EmbeddingNoise):
    key = jax.random.fold_in(jax.random.key(seed), 2)
    noise = perturbation.embedding_noise(spec.perturbation, key, tokens.shape + (text_dim,))
    return (dict(tokens=tokens, noise=noise),
            dict(tokens=null, noise=np.zeros((1,) + tokens.shape[1:] + (text_dim,), np.float32)),
            perturbed)
  return tokens, null, perturbed


def run_spec(eps_apply, params, schedule, spec: specs_lib.TextSpec, options: sampling.SamplingOptions,
             x_T: np.ndarray, cond: Any, null_row: Any, prompt_ids: np.ndarray,  # noqa: N803
             key: jax.Array, *, compiled_cache: dict | None = None) -> sampling.SampleResult:
  """Samples every (x_T, cond) pair with one spec in fixed-size batches (one compile).

  Conditions are pytrees with leading dim N (token ids [N, L], or a dict with the embedding noise);
  `null_row` has leading dim 1 and is repeated for the batch. `labels` of the result are prompt ids.
  Specs that differ only in their prompts share a compiled sampler through `compiled_cache`.
  """
  n, b = len(prompt_ids), min(options.batch, len(prompt_ids))
  pad = -n % b
  padded = lambda a: np.concatenate([a, a[:pad]]) if pad else a  # noqa: E731
  x_all, c_all = padded(x_T), jax.tree.map(padded, cond)
  null = jax.tree.map(lambda a: jnp.asarray(np.repeat(a, b, axis=0)), null_row)
  part = lambda i: jax.tree.map(lambda a: jnp.asarray(a[i:i + b]), c_all)  # noqa: E731
  t0 = time.perf_counter()
  cache_key = (repr(spec.strategy), str(jax.tree.structure(cond)), b)
  compiled = (compiled_cache or {}).get(cache_key)
  if compiled is None:
    run = samplers.make_sampler(
        eps_apply, schedule=schedule, strategy=spec.strategy, sampler=options.sampler,
        num_steps=options.num_steps, eta=options.eta, spacing=options.spacing,
        clip_x0=options.clip_x0, x0_steps=options.x0_steps, compute_d=False)
    compiled = run.lower(params, jnp.asarray(x_all[:b]), part(0), null, key).compile()
    if compiled_cache is not None:
      compiled_cache[cache_key] = compiled
  compile_s = time.perf_counter() - t0
  outs = []
  t0 = time.perf_counter()
  for i in range(0, len(x_all), b):
    x0, diag = compiled(params, jnp.asarray(x_all[i:i + b]), part(i), null, jax.random.fold_in(key, i // b))
    outs.append(jax.device_get((x0, diag)))
  sample_s = time.perf_counter() - t0
  per_step = lambda name: np.concatenate([getattr(o[1], name) for o in outs], axis=1)[:, :n]  # noqa: E731
  result = sampling.SampleResult(
      samples=np.concatenate([o[0] for o in outs])[:n], labels=np.asarray(prompt_ids),
      t=np.asarray(outs[0][1].t), d_eps=per_step("d_eps"), d_x0=per_step("d_x0"), w=per_step("w"),
      x0=per_step("x0"), transition_step=np.concatenate([o[1].transition_step for o in outs])[:n],
      compile_s=compile_s, sample_s=sample_s)
  bad = np.flatnonzero(~np.isfinite(result.samples.reshape(n, -1)).all(axis=1))
  if len(bad):
    raise FloatingPointError(f"Spec {spec.label!r} produced NaN/Inf for {len(bad)} samples "
                             f"(indices {bad[:20].tolist()}).")
  return result


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
  if positive.all() or not positive.any() or not np.isfinite(scores).all():
    return None
  return detection.auc(scores, positive)


def evaluate_spec(result: sampling.SampleResult, *, group: np.ndarray, image: np.ndarray,
                  label: np.ndarray, unique_images: np.ndarray, is_duplicated: np.ndarray,
                  classifier: classifier_lib.Classifier | None) -> tuple[dict[str, Any], np.ndarray]:
  """Metrics of one spec per prompt group, and the per-sample copy flags.

  `group`, `image`, `label` are per sample (see `prompt_groups`). Per group: n, copies (ratio test,
  any training image), copies of the prompt's own image, copies of a duplicated image, Carlini
  fraction < 0.5, class accuracy (requested class = the prompt's class). Detection: AUC of the mean
  (and first-step) d_t for memorized (positive) vs non-memorized prompts.
  """
  mem = memorization.analyse_samples(result.samples, unique_images, is_duplicated)
  nn1 = mem.nn_index[:, 0]
  own = mem.is_copy & (image >= 0) & (nn1 == image)
  predicted = classifier.predict(result.samples) if classifier is not None else None
  row: dict[str, Any] = {}
  for g, name in enumerate(GROUPS):
    where = group == g
    if not where.any():
      continue
    labelled = where & (label >= 0)
    row[f"{name}_prompts"] = dict(
        n=int(where.sum()),
        copy_rate=float(mem.is_copy[where].mean()),
        own_image_copy_rate=float(own[where].mean()) if g == 0 else None,
        duplicated_image_copy_rate=float(mem.copies_duplicated[where].mean()),
        carlini_fraction_below_0_5=float((mem.carlini[where] < 0.5).mean()),
        class_accuracy=(float((predicted[labelled] == label[labelled]).mean())
                        if predicted is not None and labelled.any() else None))
  both = group <= 1
  scores = dict(mean_d_eps=result.d_eps.mean(axis=0), mean_d_x0=result.d_x0.mean(axis=0),
                first_d_eps=result.d_eps[0])
  for name, s in scores.items():
    row[f"auc_{name}_memorized_vs_not"] = _auc(s[both], group[both] == 0) if both.any() else None
  fired = result.transition_step >= 0
  row.update(n_samples=len(group), transition_fired=float(fired.mean()),
             samples_per_s=result.samples_per_s, compile_s=result.compile_s)
  return row, mem.is_copy



def write_report(results: dict[str, Any], outdir: str, figures: dict[str, str]) -> str:
  """study/report.md: memorized vs non-memorized prompts per spec, and the figures."""
  o = results["options"]
  lines = [
      "# Text memorization study", "",
      f"Workdir `{results['workdir']}`, checkpoint step {results['checkpoint_step']}; "
      f"{results['n_samples']} samples per spec from the same initial noises and prompts "
      f"({results['n_memorized']} with memorized prompts = the unique captions of the "
      f"{len(results['prompts']['memorized'])} duplicated training images, {results['n_non_memorized']} "
      f"with non-memorized prompts = class captions); {o['sampler']}-{o['num_steps']} (η = {o['eta']}).",
      "Copy = ratio test ‖x−NN₁‖/‖x−NN₂‖ < 1/3 against the de-duplicated training set; own = the "
      "copied image is the prompt's own training image; class acc. from the evaluation classifier "
      f"(held-out accuracy {format_cell(results.get('classifier', {}).get('heldout_accuracy'), True)}); "
      "AUC = d_t detection of memorized vs non-memorized prompts (Wen et al.), mean over steps.", "",
      "| spec | memorized: copies | own image | class acc. | non-memorized: copies | class acc. | "
      "AUC d̄_ε | AUC d̄_x̂₀ | AUC d_ε first step | samples/s |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in results["strategies"].items():
    m, c = r.get("memorized_prompts", {}), r.get("non_memorized_prompts", {})
    lines.append(
        f"| `{name}` | {format_cell(m.get('copy_rate'), True)} | {format_cell(m.get('own_image_copy_rate'), True)} | "
        f"{format_cell(m.get('class_accuracy'), True)} | {format_cell(c.get('copy_rate'), True)} | "
        f"{format_cell(c.get('class_accuracy'), True)} | {format_cell(r['auc_mean_d_eps_memorized_vs_not'])} | "
        f"{format_cell(r['auc_mean_d_x0_memorized_vs_not'])} | {format_cell(r['auc_first_d_eps_memorized_vs_not'])} | "
        f"{r['samples_per_s']:.1f} |")
  lines += ["", "## Figures", ""]
  for title, path in figures.items():
    lines += [f"### {title}", "", f"![{title}]({os.path.relpath(path, outdir)})", ""]
  path = os.path.join(outdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def _meta(spec: specs_lib.TextSpec, options: sampling.SamplingOptions, step: int, prompts: Sequence[str]) -> str:
  return json.dumps(dict(label=spec.label, strategy=repr(spec.strategy), perturbation=repr(spec.perturbation),
                         step=int(step), prompts=list(prompts), options=dataclasses.asdict(options)),
                    sort_keys=True)


def sample_and_study(workdir: str, guidance_specs: str | Sequence[str] | None = None, *,
                     prompts: Sequence[str] = (), overrides: dict[str, str] | None = None,
                     num: int | None = None, num_steps: int | None = None, eta: float | None = None,
                     sampler: str | None = None, spacing: str | None = None, seed: int = 0,
                     batch: int = 200, study: bool | None = None, outdir: str | None = None,
                     classifier_cache: str | None = None, x0_steps: tuple[int, ...] = ()) -> dict:
  """Samples a text run with each spec; with several specs (or study=True) runs the prompt study.

  `prompts` are cycled over the `num` samples; without them, memorized and class prompts half each
  (`default_prompts`). Everything is validated (prompt length, specs, options) before any compile.
  """
  config = config_lib.load_workdir_config(workdir)
  tokenizer = tokenizer_lib.Tokenizer.load(os.path.join(workdir, tokenizer_lib.FILENAME))
  specs = specs_lib.parse_specs(guidance_specs or config.study.guidance, T=config.diffusion.T, overrides=overrides)
  num = num or config.study.num_samples
  options = sampling.options_from_config(config, num=num, num_steps=num_steps, eta=eta, sampler=sampler,
                                         spacing=spacing, seed=seed, batch=batch, x0_steps=tuple(x0_steps))
  options.validate(config.diffusion.T, 10)
  manifest_path = os.path.join(workdir, "manifest.json")
  manifest = Manifest.load(manifest_path) if os.path.exists(manifest_path) else None
  if prompts:
    base = [prompts[i % len(prompts)] for i in range(num)]
  else:
    if manifest is None:
      raise FileNotFoundError(f"{manifest_path} is missing: pass --prompt, or train the run first.")
    base, _ = default_prompts(manifest, config.data.name, num)
  unknown = sorted({w for p in set(base) for w in tokenizer.unknown_words(p)})
  if unknown:
    log.warning("Words not in the training vocabulary (encoded as <unk>): %s", ", ".join(unknown))
  text_dim = config.model.text_dim
  conds = [conditions(s, base, tokenizer, text_dim=text_dim, seed=seed) for s in specs]  # validates
  study = len(specs) > 1 if study is None else study
  outdir = outdir or os.path.join(workdir, "study" if study else "samples")
  config, eps_apply, params, schedule, _, step = sampling.load_sampling_model(workdir)
  shape = (config.data.resolution, config.data.resolution, config.data.channels)
  x_T, _, key = sampling.shared_inputs(options, shape=shape, num_classes=10)  # noqa: N806
  distinct = list(dict.fromkeys(base))
  prompt_ids = np.asarray([distinct.index(p) for p in base], np.int32)
  t_start = time.perf_counter()
  results, compiled_cache = {}, {}
  for spec, (cond, null_row, perturbed) in zip(specs, conds):
    meta = _meta(spec, options, step, base)
    npz = os.path.join(outdir, f"{spec.slug}.npz")
    result = sampling.load_result(npz, meta)
    if result is None:
      result = run_spec(eps_apply, params, schedule, spec, options, x_T, cond, null_row, prompt_ids, key,
                        compiled_cache=compiled_cache)
      sampling.save_result(result, spec, outdir, meta)
      log.info("%s: %d samples in %.1f s (compile %.1f s); e.g. %r", spec.label, num, result.sample_s,
               result.compile_s, perturbed[0])
    else:
      log.info("%s: reusing the samples in %s.", spec.label, npz)
    results[spec.label] = result
  summary = dict(version=RESULTS_VERSION, kind="text", workdir=workdir, checkpoint_step=step,
                 n_samples=num, options=dict(options.__dict__), prompt_list=distinct,
                 perturbed_examples={s.label: c[2][:3] for s, c in zip(specs, conds)})
  if not study:
    summary["strategies"] = {k: dict(samples_per_s=r.samples_per_s, compile_s=r.compile_s)
                             for k, r in results.items()}
    with open(os.path.join(outdir, "sampling.json"), "w") as f:
      json.dump(summary, f, indent=2)
    return summary
  return _study(config, outdir, specs, results, summary, base, manifest, classifier_cache, t_start)


def _study(config, outdir, specs, results, summary, prompts, manifest, classifier_cache, t_start) -> dict:
  subset = inputs.load_training_data(config)
  manifest = subset.manifest
  group, image, label = prompt_groups(prompts, manifest, config.data.name)
  try:
    clf = classifier_lib.load_or_train_classifier(
        resolution=config.data.resolution, cache_dir=classifier_cache, dataset=config.data.name,
        seed=config.seed, settings=classifier_lib.TrainSettings(epochs=config.study.get("classifier_epochs", 15)))
  except (FileNotFoundError, ValueError) as e:
    log.warning("No evaluation classifier (%s): class accuracy is left out.", e)
    clf = None
  rows, copies = {}, {}
  for spec in specs:
    rows[spec.label], copies[spec.label] = evaluate_spec(
        results[spec.label], group=group, image=image, label=label, unique_images=subset.unique_images,
        is_duplicated=manifest.is_duplicated, classifier=clf)
    if spec.perturbation is not None:
      rows[spec.label]["perturbation"] = dict(name=type(spec.perturbation).__name__,
                                              **dataclasses.asdict(spec.perturbation))
  summary.update(
      n_memorized=int((group == 0).sum()), n_non_memorized=int((group == 1).sum()),
      prompts=dict(memorized=sorted({p for p, g in zip(prompts, group) if g == 0}),
                   non_memorized=sorted({p for p, g in zip(prompts, group) if g == 1}),
                   other=sorted({p for p, g in zip(prompts, group) if g == 2})),
      data=dict(name=config.data.name, resolution=config.data.resolution,
                n_unique=int(len(manifest.label)), n_duplicated=int(manifest.is_duplicated.sum()),
                dup_factor=int(config.data.dup_factor), n_train=int(len(manifest.unique_id))),
      strategies=rows, wall_s=time.perf_counter() - t_start)
  if clf is not None:
    summary["classifier"] = dict(heldout_accuracy=clf.heldout_accuracy)
  figures = {f"samples: {s.label}": os.path.join(outdir, f"{s.slug}_grid.png") for s in specs}
  ref = next((s for s in specs if s.label.startswith("cfg") and s.perturbation is None), specs[0])
  r = results[ref.label]
  if np.isfinite(r.d_eps).all():
    for measure, d in (("eps", r.d_eps), ("x0", r.d_x0)):
      path = os.path.join(outdir, f"dt_{measure}_memorized_vs_not.png")
      plots.plot_d_curves(r.t, d, r.transition_step, path, title=f"{ref.label}: d_t ({measure}-space)",
                          ylabel="‖ε_c − ε_u‖₂" if measure == "eps" else "‖x̂₀_c − x̂₀_u‖₂",
                          groups={"memorized prompts": group == 0, "non-memorized prompts": group == 1})
      figures[f"d_t ({measure}-space), memorized vs non-memorized prompts, under {ref.label}"] = path
  with open(os.path.join(outdir, "results.json"), "w") as f:
    json.dump(summary, f, indent=2)
  write_report(summary, outdir, figures)
  log.info("Text study written to %s (results.json, report.md).", outdir)
  return summary
