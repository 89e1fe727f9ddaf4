"""Config handling: typed views of the ml_collections config, validation, and the workdir's config.json."""
from __future__ import annotations

import json
import math
import os

import ml_collections

from minidiff.core import samplers, specs
from minidiff.data import captions
from minidiff.data import datasets as data_lib
from minidiff.data.duplication import DuplicationSpec
from minidiff.nn.unet import UNetConfig

# Fields that may change when a run is resumed (they do not change what has been trained so far).
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.checkpoint_every", "train.max_to_keep",
                    "data.data_dir", "sample", "study", "parallel")
# Fields added after runs were saved: a saved config without them had these values.
ADDED_FIELD_DEFAULTS = {"model.compute_dtype": "float32"}


def is_text(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` describes a text-conditioned model (config.model.conditioning == "text")."""
  return config.model.get("conditioning", "class") == "text"


def _text_fields(m: ml_collections.ConfigDict) -> dict:
  """UNetConfig's text fields from config.model (absent from class configs: the defaults)."""
  if m.get("conditioning", "class") != "text":
    return {}
  return dict(conditioning="text", vocab_size=m.vocab_size, max_tokens=m.max_tokens,
              text_dim=m.text_dim, text_layers=m.text_layers, text_heads=m.text_heads,
              cross_attention_resolutions=tuple(m.cross_attention_resolutions))


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
  """The UNetConfig that `config.model` and `config.data` describe."""
  m = config.model
  return UNetConfig(**_text_fields(m),
      resolution=config.data.resolution, in_channels=config.data.channels,
      base_channels=m.base_channels, channel_mults=tuple(m.channel_mults),
      num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
      dropout=m.dropout, num_groups=m.num_groups, num_heads=m.num_heads,
      num_classes=data_lib.NUM_CLASSES.get(config.data.name, 10))


def duplication_spec(config: ml_collections.ConfigDict) -> DuplicationSpec:
  d = config.data
  return DuplicationSpec(
      n_unique_per_class=d.n_unique_per_class, num_duplicated_per_class=d.num_duplicated_per_class,
      dup_factor=d.dup_factor, dup_fraction=d.dup_fraction,
      duplicated_classes=tuple(d.duplicated_classes) if d.duplicated_classes else None,
      seed=config.seed)


# Every field the library reads, with its type: `int` fields take ints (not bools or floats), `float`
# fields take finite ints or floats. Checked before any range, so no check below meets a bad type.
FIELD_TYPES: dict[str, type] = {
    "seed": int,
    "data.name": str, "data.data_dir": str, "data.resolution": int, "data.channels": int,
    "data.n_unique_per_class": int, "data.num_duplicated_per_class": int, "data.dup_factor": int,
    "data.dup_fraction": float, "data.duplicated_classes": tuple,
    "model.base_channels": int, "model.channel_mults": tuple, "model.num_res_blocks": int,
    "model.attention_resolutions": tuple, "model.dropout": float, "model.num_groups": int,
    "model.num_heads": int,
    "diffusion.schedule": str, "diffusion.T": int,
    "train.steps": int, "train.batch_size": int, "train.lr": float, "train.warmup_steps": int,
    "train.weight_decay": float, "train.grad_clip": float, "train.ema_decay": float,
    "train.p_uncond": float, "train.log_every": int, "train.checkpoint_every": int,
    "train.max_to_keep": int,
    "sample.sampler": str, "sample.num_steps": int, "sample.eta": float, "sample.spacing": str,
    "sample.clip_x0": bool,
    "study.guidance": str, "study.num_samples": int,
}
# Fields added later (runs saved before them still load): checked when present.
OPTIONAL_FIELDS = {"study.classifier_epochs": int, "model.compute_dtype": str,
                   "parallel.num_devices": int, "parallel.multi_host": bool,
                   "parallel.coordinator_address": str, "parallel.num_processes": int,
                   "parallel.process_id": int,
                   "model.conditioning": str, "model.vocab_size": int, "model.max_tokens": int,
                   "model.text_dim": int, "model.text_layers": int, "model.text_heads": int,
                   "model.cross_attention_resolutions": tuple}
# Images per class in each dataset's training split (MNIST's smallest class, 5, has 5,421).
IMAGES_PER_CLASS = {data_lib.OFFLINE_MNIST: 500, "mnist": 5421, "fashion_mnist": 6000, "cifar10": 5000}


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(msg)


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      raise KeyError(key)
    node = node[part]
  return node


def _check_type(key: str, value, kind) -> None:
  where = f"config.{key}={value!r}"
  if kind is int:
    _check(_is_int(value), f"{where} must be an integer.")
  elif kind is float:
    _check(_is_number(value) and math.isfinite(value), f"{where} must be a finite number.")
  elif kind is bool:
    _check(isinstance(value, bool), f"{where} must be True or False.")
  elif kind is str:
    _check(isinstance(value, str), f"{where} must be a string.")
  elif kind is tuple:
    _check(isinstance(value, (tuple, list)) and all(_is_int(v) for v in value),
           f"{where} must be a tuple of integers, e.g. (1, 2).")


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def check_types(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a missing field or a value of the wrong type, naming the field."""
  for key, kind in FIELD_TYPES.items():
    try:
      value = _get(config, key)
    except KeyError:
      raise ValueError(f"config.{key} is missing; add it to the config (every field and its "
                       f"default: configs/mnist_dup.py).") from None
    _check_type(key, value, kind)
  for key, kind in OPTIONAL_FIELDS.items():
    try:
      _check_type(key, _get(config, key), kind)
    except KeyError:
      pass


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, naming the field and what to change, before anything is built or compiled.

  Device-dependent checks (batch divisible by the device count) are the trainer's.
  """
  check_types(config)
  d, t = config.data, config.train
  _check(config.seed >= 0, f"config.seed={config.seed} must be ≥ 0.")
  _check(d.name in data_lib.DATASET_NAMES,
         f"config.data.name={d.name!r} is unknown; choose one of {', '.join(data_lib.DATASET_NAMES)}.")
  _check(config.diffusion.schedule in ("linear", "cosine"),
         f"config.diffusion.schedule={config.diffusion.schedule!r}: use 'linear' or 'cosine'.")
  _check(config.diffusion.T >= 2, f"config.diffusion.T={config.diffusion.T} must be ≥ 2.")
  _check(t.steps >= 1, f"config.train.steps={t.steps} must be ≥ 1.")
  _check(t.batch_size >= 1, f"config.train.batch_size={t.batch_size} must be ≥ 1.")
  _check(t.lr > 0, f"config.train.lr={t.lr} must be > 0 (e.g. 1e-3).")
  _check(t.warmup_steps >= 0, f"config.train.warmup_steps={t.warmup_steps} must be ≥ 0.")
  _check(t.weight_decay >= 0, f"config.train.weight_decay={t.weight_decay} must be ≥ 0.")
  _check(0.0 <= t.p_uncond < 1.0, f"config.train.p_uncond={t.p_uncond} must lie in [0, 1) (e.g. 0.1).")
  _check(0.0 <= t.ema_decay < 1.0,
         f"config.train.ema_decay={t.ema_decay} must lie in [0, 1) (e.g. 0.999).")
  _check(t.grad_clip > 0, f"config.train.grad_clip={t.grad_clip} must be > 0.")
  for key in ("checkpoint_every", "log_every", "max_to_keep"):
    _check(t[key] >= 1, f"config.train.{key}={t[key]} must be ≥ 1.")
  _check(d.resolution >= 4, f"config.data.resolution={d.resolution} must be ≥ 4.")
  expected_channels = 3 if d.name == "cifar10" else 1
  _check(d.channels == expected_channels,
         f"config.data.channels={d.channels} but {d.name} has {expected_channels} channel(s).")
  _validate_model(config)
  _validate_duplication(config)
  _validate_sampling(config)
  _validate_parallel(config)
  _validate_text(config)


def _validate_text(config: ml_collections.ConfigDict) -> None:
  """A text scenario needs captions for its dataset and duplicated images to caption uniquely."""
  if not is_text(config):
    return
  d = config.data
  captions.dataset_family(d.name)  # raises for a dataset without captions
  _check(d.num_duplicated_per_class > 0 or d.dup_fraction > 0,
         "A text scenario gives its duplicated images unique captions: set "
         "config.data.num_duplicated_per_class ≥ 1 or config.data.dup_fraction > 0.")


def _validate_parallel(config: ml_collections.ConfigDict) -> None:
  """config.parallel and config.model.compute_dtype (the device count itself is the trainer's)."""
  dtype = config.model.get("compute_dtype", "float32")
  _check(dtype in ("float32", "bfloat16"),
         f"config.model.compute_dtype={dtype!r}: use 'float32' or 'bfloat16' (GPU/TPU).")
  p = config.get("parallel", None)
  if p is None:
    return
  _check(p.num_devices >= 0, f"config.parallel.num_devices={p.num_devices} must be ≥ 0 (0 = all).")
  if p.multi_host and p.coordinator_address:
    _check(p.num_processes >= 1 and 0 <= p.process_id < p.num_processes,
           f"config.parallel.process_id={p.process_id} must lie in [0, num_processes="
           f"{p.num_processes}).")


def _validate_model(config: ml_collections.ConfigDict) -> None:
  d, m = config.data, config.model
  for key in ("base_channels", "num_res_blocks", "num_groups", "num_heads"):
    _check(m[key] >= 1, f"config.model.{key}={m[key]} must be ≥ 1.")
  _check(0.0 <= m.dropout < 1.0, f"config.model.dropout={m.dropout} must lie in [0, 1).")
  mults = tuple(m.channel_mults)
  _check(len(mults) >= 1 and min(mults) >= 1,
         f"config.model.channel_mults={mults} must be one or more integers ≥ 1, e.g. (1, 2, 2).")
  levels = len(mults)
  _check(d.resolution % 2 ** (levels - 1) == 0,
         f"config.data.resolution={d.resolution} is not divisible by 2^{levels - 1} = "
         f"{2 ** (levels - 1)} (each of the {levels} levels of config.model.channel_mults={mults} "
         f"after the first halves it); change the resolution or use fewer channel_mults.")
  sizes = [d.resolution // 2**i for i in range(levels)]
  bad = [r for r in m.attention_resolutions if r not in sizes]
  _check(not bad, f"config.model.attention_resolutions={tuple(m.attention_resolutions)} contains "
         f"{bad}, which no level has; the feature-map sizes are {sizes}.")
  for c in sorted({m.base_channels * k for k in mults}):
    _check(c % m.num_groups == 0, f"config.model.num_groups={m.num_groups} does not divide the "
           f"channel count {c} (base_channels × channel_mults); choose a divisor of it.")
  attended = {m.base_channels * mults[i] for i, r in enumerate(sizes) if r in m.attention_resolutions}
  for c in sorted(attended | {m.base_channels * mults[-1]}):  # the middle block always attends
    _check(c % m.num_heads == 0, f"config.model.num_heads={m.num_heads} does not divide the "
           f"channel count {c} of an attention block; choose a divisor of it.")
  unet_config(config).validate()  # the model's own checks, as a backstop


def _validate_duplication(config: ml_collections.ConfigDict) -> None:
  d = config.data
  num_classes = data_lib.NUM_CLASSES.get(d.name, 10)
  try:
    duplication_spec(config).validate(num_classes)
  except ValueError as e:
    raise ValueError(f"config.data: {e}") from None
  available = IMAGES_PER_CLASS.get(d.name)
  _check(available is None or d.n_unique_per_class <= available,
         f"config.data.n_unique_per_class={d.n_unique_per_class} but {d.name} has only {available} "
         f"images per class; use at most {available}.")


def _validate_sampling(config: ml_collections.ConfigDict) -> None:
  """config.sample and config.study, so a typo there fails now and not after training."""
  s, T = config.sample, config.diffusion.T  # noqa: N806
  _check(s.sampler in samplers.SAMPLERS,
         f"config.sample.sampler={s.sampler!r}: choose one of {', '.join(samplers.SAMPLERS)}.")
  _check(1 <= s.num_steps <= T, f"config.sample.num_steps={s.num_steps} must lie in [1, T={T}].")
  _check(0.0 <= s.eta <= 1.0, f"config.sample.eta={s.eta} must lie in [0, 1].")
  _check(s.spacing in samplers.SPACINGS,
         f"config.sample.spacing={s.spacing!r}: choose one of {', '.join(samplers.SPACINGS)}.")
  study = config.study
  _check(study.num_samples >= 1, f"config.study.num_samples={study.num_samples} must be ≥ 1.")
  _check(study.get("classifier_epochs", 1) >= 1,
         f"config.study.classifier_epochs={study.get('classifier_epochs')} must be ≥ 1.")
  try:
    if is_text(config):  # text specs may add a prompt perturbation after "+"
      specs.parse_specs(study.guidance, T=T)
    else:
      specs.parse_guidance(study.guidance, T=T)
  except ValueError as e:
    raise ValueError(f"config.study.guidance={study.guidance!r}: {e}") from None


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
  """{'a.b': v} view of a nested config (tuples as lists, for comparison with JSON)."""
  items = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  out = {}
  for k, v in items.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def _resumable(key: str) -> bool:
  return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def check_or_write_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json, or refuses when the workdir holds a run with a different config.

  Only RESUMABLE_FIELDS (e.g. train.steps) may differ; anything else means the checkpoints there
  belong to another experiment, and they are never overwritten.
  """
  path = os.path.join(workdir, "config.json")
  os.makedirs(workdir, exist_ok=True)
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    a, b = {**ADDED_FIELD_DEFAULTS, **flatten(old)}, flatten(new)
    diffs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not _resumable(k))
    if diffs:
      lines = "\n".join(f"  {k}: saved {a.get(k)!r} → given {b.get(k)!r}" for k in diffs)
      raise ValueError(
          f"{workdir} holds a run trained with a different config:\n{lines}\n"
          f"Use a new --workdir, pass the same settings to resume it, or delete {workdir} yourself "
          f"to start over. Nothing was changed.")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(new, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config that train.py saved in `workdir`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a training workdir? "
                            f"Train first: python train.py --config configs/mnist_dup.py --workdir {workdir}")
  with open(path) as f:
    d = json.load(f)
  return ml_collections.ConfigDict(_tuplify(d))


def _tuplify(d):
  if isinstance(d, dict):
    return {k: _tuplify(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuplify(v) for v in d)
  return d
