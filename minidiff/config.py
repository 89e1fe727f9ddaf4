"""Config handling: typed frozen sections of the ml_collections config, validation, config.json.

Each section (DataSection, TrainSection, ...) declares its fields once: type, range and message
(and a default for fields added after runs were saved). `sections(config)` builds them from the
ml_collections config, checking every field; `validate_config` adds the cross-field checks. The
command line keeps `--config.a.b=v` (ml_collections config_flags) and the workdir keeps config.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Callable, Sequence

import ml_collections

from minidiff.core import samplers, specs
from minidiff.data import captions
from minidiff.data import datasets as data_lib
from minidiff.data.duplication import DuplicationSpec
from minidiff.nn.unet import UNetConfig

log = logging.getLogger(__name__)

# Fields that may change when a run is resumed (they do not change what has been trained so far).
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.checkpoint_every", "train.max_to_keep",
                    "data.data_dir", "sample", "study", "parallel", "monitor")
# Fields added after runs were saved: a saved config without them had these values.
ADDED_FIELD_DEFAULTS = {"model.compute_dtype": "float32", "model.fused_layers": False,
                        "data.n_unique_per_duplicated_class": 0,
                        "data.data_dir": "",
                        "monitor.every": 0, "monitor.num_samples": 64, "monitor.num_steps": 20,
                        "monitor.w": 1.0, "monitor.stop_copy_rate": 1.0,
                        "monitor.class_accuracy": False}


REQUIRED = object()  # a field without a default: a config must set it


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one field is checked: its type, then `ok(value)`; `message` formats with {where}."""

  kind: type  # int, float (finite), bool, str, or tuple (of ints)
  ok: Callable[[Any], bool] | None = None
  message: str = ""  # e.g. "{where} must be ≥ 1."; where = "config.<field>=<value>"


def _field(kind: type, ok: Callable[[Any], bool] | None = None, message: str = "", *,
           default: Any = REQUIRED) -> Any:
  """A section field: its type, range and message (and, for fields added later, its default)."""
  kw = {} if default is REQUIRED else {"default": default}
  return dataclasses.field(metadata={"rule": Rule(kind, ok, message)}, **kw)


def _at_least(n: int, kind: type = int, note: str = "", **kw: Any) -> Any:
  return _field(kind, lambda v: v >= n, f"{{where}} must be ≥ {n}{note}.", **kw)


def _in(lo: float, hi: float, kind: type = float, *, closed: bool = False, note: str = "") -> Any:
  if closed:
    return _field(kind, lambda v: lo <= v <= hi, f"{{where}} must lie in [{lo:g}, {hi:g}]{note}.")
  return _field(kind, lambda v: lo <= v < hi, f"{{where}} must lie in [{lo:g}, {hi:g}){note}.")


def _one_of(names: Sequence[str], message: str, **kw: Any) -> Any:
  return _field(str, lambda v: v in names, message, **kw)


_UNET = {f.name: f.default for f in dataclasses.fields(UNetConfig)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSection:
  name: str = _one_of(data_lib.DATASET_NAMES, "{where} is unknown; choose one of "
                      + ", ".join(data_lib.DATASET_NAMES) + ".")
  data_dir: str = _field(str, default="")  # the dataset's files (or tfds data_dir); "" = defaults
  resolution: int = _at_least(4)
  channels: int = _field(int)  # checked against the dataset below
  n_unique_per_class: int = _field(int)  # DuplicationSpec.validate checks the duplication fields
  num_duplicated_per_class: int = _field(int)
  dup_factor: int = _field(int)
  dup_fraction: float = _field(float)
  duplicated_classes: tuple = _field(tuple)
  n_unique_per_duplicated_class: int = _at_least(0, note=" (0: n_unique_per_class)", default=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSection:
  # Ranges and the architecture's consistency: UNetConfig.validate, the one place of those checks.
  base_channels: int = _field(int)
  channel_mults: tuple = _field(tuple)
  num_res_blocks: int = _field(int)
  attention_resolutions: tuple = _field(tuple)
  dropout: float = _field(float)
  num_groups: int = _field(int)
  num_heads: int = _field(int)
  compute_dtype: str = _one_of(("float32", "bfloat16"), "{where}: use 'float32' or 'bfloat16' (GPU/TPU).",
                               default="float32")
  conditioning: str = _field(str, default=_UNET["conditioning"])
  vocab_size: int = _field(int, default=_UNET["vocab_size"])
  max_tokens: int = _field(int, default=_UNET["max_tokens"])
  text_dim: int = _field(int, default=_UNET["text_dim"])
  text_layers: int = _field(int, default=_UNET["text_layers"])
  text_heads: int = _field(int, default=_UNET["text_heads"])
  cross_attention_resolutions: tuple = _field(tuple, default=_UNET["cross_attention_resolutions"])
  fused_layers: bool = _field(bool, default=_UNET["fused_layers"])  # UNetConfig.fused_layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffusionSection:
  schedule: str = _one_of(("linear", "cosine"), "{where}: use 'linear' or 'cosine'.")
  T: int = _at_least(2)  # noqa: N815


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSection:
  steps: int = _at_least(1)
  batch_size: int = _at_least(1)
  lr: float = _field(float, lambda v: v > 0, "{where} must be > 0 (e.g. 1e-3).")
  warmup_steps: int = _at_least(0)
  weight_decay: float = _at_least(0, float)
  grad_clip: float = _field(float, lambda v: v > 0, "{where} must be > 0.")
  ema_decay: float = _in(0, 1, note=" (e.g. 0.999)")
  p_uncond: float = _in(0, 1, note=" (e.g. 0.1)")
  log_every: int = _at_least(1)
  checkpoint_every: int = _at_least(1)
  max_to_keep: int = _at_least(1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleSection:
  sampler: str = _one_of(samplers.SAMPLERS, "{where}: choose one of " + ", ".join(samplers.SAMPLERS) + ".")
  num_steps: int = _field(int)  # in [1, T]: checked with diffusion.T below
  eta: float = _in(0, 1, closed=True)
  spacing: str = _one_of(samplers.SPACINGS, "{where}: choose one of " + ", ".join(samplers.SPACINGS) + ".")
  clip_x0: bool = _field(bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudySection:
  guidance: str = _field(str)  # parsed by minidiff.core.specs below
  num_samples: int = _at_least(1)
  classifier_epochs: int = _at_least(1, default=15)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorSection:
  """The memorization monitor during training (minidiff/train/monitor.py); off unless every ≥ 1."""

  every: int = _at_least(0, note=" (0 = no monitor)", default=0)  # steps between checks
  num_samples: int = _at_least(2, note=" (samples per check, e.g. 64)", default=64)
  num_steps: int = _field(int, default=20)  # DDIM steps per check, in [1, T]: checked below
  w: float = _field(float, default=1.0)  # guidance weight: 0 null branch, 1 conditional, > 1 CFG
  stop_copy_rate: float = _field(float, lambda v: 0 <= v <= 1, "{where} must lie in [0, 1] (1 = "
                                 "never stop).", default=1.0)  # stop once copy_rate_unique > it
  class_accuracy: bool = _field(bool, default=False)  # the study's classifier (class models only)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParallelSection:
  num_devices: int = _at_least(0, note=" (0 = all)", default=0)
  multi_host: bool = _field(bool, default=False)
  coordinator_address: str = _field(str, default="")
  num_processes: int = _field(int, default=1)
  process_id: int = _field(int, default=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """The typed, checked view of an ml_collections config (`sections(config)`)."""

  seed: int = _at_least(0)
  data: DataSection
  model: ModelSection
  diffusion: DiffusionSection
  train: TrainSection
  sample: SampleSection
  study: StudySection
  parallel: ParallelSection
  monitor: MonitorSection

  @property
  def is_text(self) -> bool:
    return self.model.conditioning == "text"


def _table() -> dict[str, dataclasses.Field]:
  """{'train.steps': its dataclass field} of every leaf field of the config."""
  out = {}
  for f in dataclasses.fields(Config):
    if f.name in _SECTIONS:
      out.update({f"{f.name}.{g.name}": g for g in dataclasses.fields(_SECTIONS[f.name])})
    else:
      out[f.name] = f
  return out


_SECTIONS = {"data": DataSection, "model": ModelSection, "diffusion": DiffusionSection,
             "train": TrainSection, "sample": SampleSection, "study": StudySection,
             "parallel": ParallelSection, "monitor": MonitorSection}
# Every field the library reads: a config must set these (type as in the sections) …
FIELD_TYPES: dict[str, type] = {k: f.metadata["rule"].kind for k, f in _table().items()
                                if f.default is dataclasses.MISSING}
# … and fields added later (runs saved before them still load, with the section's default).
OPTIONAL_FIELDS: dict[str, type] = {k: f.metadata["rule"].kind for k, f in _table().items()
                                    if f.default is not dataclasses.MISSING}
# Images per class in each dataset's training split (MNIST's smallest class, 5, has 5,421).
IMAGES_PER_CLASS = {data_lib.OFFLINE_MNIST: 500, "mnist": 5421, "fashion_mnist": 6000, "cifar10": 5000,
                    "cifar100": 500}
# What UNetConfig.validate calls each of its fields in a message.
_UNET_NAMES = {"resolution": "config.data.resolution", "in_channels": "config.data.channels",
               **{f: f"config.model.{f}" for f in _UNET if f not in ("resolution", "in_channels")}}


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(msg)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _check_rule(key: str, value: Any, rule: Rule) -> Any:
  """The value, type- then range-checked by `rule` (tuples of ints come back as tuples)."""
  where = f"config.{key}={value!r}"
  kind = rule.kind
  if kind is int:
    _check(_is_int(value), f"{where} must be an integer.")
  elif kind is float:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
           f"{where} must be a finite number.")
  elif kind is bool:
    _check(isinstance(value, bool), f"{where} must be True or False.")
  elif kind is str:
    _check(isinstance(value, str), f"{where} must be a string.")
  elif kind is tuple:
    _check(isinstance(value, (tuple, list)) and all(_is_int(v) for v in value),
           f"{where} must be a tuple of integers, e.g. (1, 2).")
    value = tuple(value)
  if rule.ok is not None:
    _check(rule.ok(value), rule.message.format(where=where))
  return value


def _build(cls: type, node: Any, prefix: str) -> Any:
  kw = {}
  for f in dataclasses.fields(cls):
    key = f"{prefix}{f.name}"
    if cls is Config and f.name in _SECTIONS:  # an absent section (parallel): its defaults
      kw[f.name] = _build(_SECTIONS[f.name], node.get(f.name, None), f"{key}.")
      continue
    present = node is not None and f.name in node
    if not present:
      if f.default is dataclasses.MISSING:
        raise ValueError(f"config.{key} is missing; add it to the config (every field and its "
                         f"default: configs/mnist_dup.py).")
      continue
    kw[f.name] = _check_rule(key, node[f.name], f.metadata["rule"])
  return cls(**kw)


def sections(config: ml_collections.ConfigDict) -> Config:
  """The typed frozen sections of `config`, each field type- and range-checked from its section.

  Raises ValueError naming `config.<field>=<value>` and what to change. Cross-field checks (the
  architecture, the duplication, sample.num_steps ≤ T, the study's specs) are `validate_config`'s.
  """
  return _build(Config, config, "")


def check_types(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a missing field or a value of the wrong type or range, naming the field."""
  sections(config)


def is_text(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` describes a text-conditioned model (config.model.conditioning == "text")."""
  return config.model.get("conditioning", "class") == "text"


def unet_config(config: ml_collections.ConfigDict | Config) -> UNetConfig:
  """The UNetConfig that `config.model` and `config.data` describe."""
  c = config if isinstance(config, Config) else sections(config)
  m = c.model
  text = {} if not c.is_text else dict(
      conditioning="text", vocab_size=m.vocab_size, max_tokens=m.max_tokens, text_dim=m.text_dim,
      text_layers=m.text_layers, text_heads=m.text_heads,
      cross_attention_resolutions=m.cross_attention_resolutions)
  return UNetConfig(**text,
      resolution=c.data.resolution, in_channels=c.data.channels,
      base_channels=m.base_channels, channel_mults=m.channel_mults,
      num_res_blocks=m.num_res_blocks, attention_resolutions=m.attention_resolutions,
      dropout=m.dropout, num_groups=m.num_groups, num_heads=m.num_heads,
      fused_layers=m.fused_layers, num_classes=data_lib.NUM_CLASSES.get(c.data.name, 10))


def duplication_spec(config: ml_collections.ConfigDict | Config) -> DuplicationSpec:
  c = config if isinstance(config, Config) else sections(config)
  d = c.data
  return DuplicationSpec(
      n_unique_per_class=d.n_unique_per_class, num_duplicated_per_class=d.num_duplicated_per_class,
      dup_factor=d.dup_factor, dup_fraction=d.dup_fraction,
      duplicated_classes=d.duplicated_classes or None, seed=c.seed,
      n_unique_per_duplicated_class=d.n_unique_per_duplicated_class)


def validate_config(config: ml_collections.ConfigDict) -> Config:
  """Raises ValueError, naming the field and what to change, before anything is built or compiled.

  Returns the typed sections. Device-dependent checks (batch divisible by the device count) are
  the trainer's.
  """
  c = sections(config)
  d = c.data
  expected_channels = data_lib.CHANNELS.get(d.name, 1)
  _check(d.channels == expected_channels,
         f"config.data.channels={d.channels} but {d.name} has {expected_channels} channel(s).")
  unet_config(c).validate(names=_UNET_NAMES)  # the architecture's checks, in one place
  _validate_duplication(c)
  _validate_sampling(c)
  _validate_monitor(c)
  p = c.parallel
  if p.multi_host and p.coordinator_address:
    _check(p.num_processes >= 1 and 0 <= p.process_id < p.num_processes,
           f"config.parallel.process_id={p.process_id} must lie in [0, num_processes="
           f"{p.num_processes}).")
  if c.is_text:  # a text scenario needs captions for its dataset and duplicated images to caption
    captions.dataset_family(d.name)  # raises for a dataset without captions
    _check(d.num_duplicated_per_class > 0 or d.dup_fraction > 0,
           "A text scenario gives its duplicated images unique captions: set "
           "config.data.num_duplicated_per_class ≥ 1 or config.data.dup_fraction > 0.")
  return c


def _validate_duplication(c: Config) -> None:
  d = c.data
  try:
    duplication_spec(c).validate(data_lib.NUM_CLASSES.get(d.name, 10))
  except ValueError as e:
    raise ValueError(f"config.data: {e}") from None
  available = IMAGES_PER_CLASS.get(d.name)
  _check(available is None or d.n_unique_per_class <= available,
         f"config.data.n_unique_per_class={d.n_unique_per_class} but {d.name} has only {available} "
         f"images per class; use at most {available}.")


def _validate_sampling(c: Config) -> None:
  """config.sample.num_steps against T and config.study.guidance, so a typo fails now, not after training."""
  s, T = c.sample, c.diffusion.T  # noqa: N806
  _check(1 <= s.num_steps <= T, f"config.sample.num_steps={s.num_steps} must lie in [1, T={T}].")
  try:
    if c.is_text:  # text specs may add a prompt perturbation after "+"
      specs.parse_specs(c.study.guidance, T=T)
    else:
      specs.parse_guidance(c.study.guidance, T=T)
  except ValueError as e:
    raise ValueError(f"config.study.guidance={c.study.guidance!r}: {e}") from None


def _validate_monitor(c: Config) -> None:
  """config.monitor.num_steps against T; class accuracy needs a class-conditional model."""
  m, T = c.monitor, c.diffusion.T  # noqa: N806
  _check(1 <= m.num_steps <= T, f"config.monitor.num_steps={m.num_steps} must lie in [1, T={T}].")
  _check(not (m.class_accuracy and c.is_text),
         "config.monitor.class_accuracy=True needs a class-conditional model; a text model has no "
         "requested class: set it to False.")


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


def is_resumable(key: str) -> bool:
  """Whether `key` (e.g. 'train.steps') may differ when a run is resumed (RESUMABLE_FIELDS)."""
  return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir/checkpoints` holds a finished checkpoint (a folder named by its step)."""
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def _read_json(path: str, workdir: str) -> dict:
  """config.json's content; a file that is not valid JSON is a ValueError naming it and the fix."""
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(
        f"{path} is not valid JSON ({type(e).__name__}: {str(e).splitlines()[0][:120]}); it was "
        f"cut short or edited. Restore it, or delete it to let the next train.py call rewrite it "
        f"from --config (the checkpoints in {workdir} must match that config).") from None


def check_or_write_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json, or refuses when the workdir holds a run with a different config.

  Only RESUMABLE_FIELDS (e.g. train.steps) may differ; anything else means the checkpoints there
  belong to another experiment, and they are never overwritten. A workdir with no checkpoint yet
  (a start that failed, e.g. on missing data, before its first save) holds nothing trained: its
  config.json is replaced by the new one.
  """
  path = os.path.join(workdir, "config.json")
  os.makedirs(workdir, exist_ok=True)
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    try:
      old = _read_json(path, workdir)
    except ValueError:
      if has_checkpoint(workdir):
        raise
      old = {}
    a, b = {**ADDED_FIELD_DEFAULTS, **flatten(old)}, flatten(new)
    diffs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not is_resumable(k))
    if diffs and not has_checkpoint(workdir):
      log.info("%s holds no checkpoint (an earlier start stopped before its first save): its "
               "config.json is replaced by this run's.", workdir)
    elif diffs:
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
  return ml_collections.ConfigDict(_tuplify(_read_json(path, workdir)))


def _tuplify(d):
  if isinstance(d, dict):
    return {k: _tuplify(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuplify(v) for v in d)
  return d
