"""Config handling: typed views of the ml_collections config, validation, and the workdir's config.json."""
from __future__ import annotations

import json
import os

import ml_collections

from minidiff import data as data_lib
from minidiff.duplication import DuplicationSpec
from minidiff.unet import UNetConfig

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


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(msg)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, naming the field and what to change, before anything is built or compiled."""
  d, t = config.data, config.train
  _check(d.name in data_lib.DATASET_NAMES,
         f"config.data.name={d.name!r} is unknown; choose one of {', '.join(data_lib.DATASET_NAMES)}.")
  _check(config.diffusion.schedule in ("linear", "cosine"),
         f"config.diffusion.schedule={config.diffusion.schedule!r}: use 'linear' or 'cosine'.")
  _check(config.diffusion.T >= 2, f"config.diffusion.T={config.diffusion.T} must be ≥ 2.")
  _check(t.steps >= 1, f"config.train.steps={t.steps} must be ≥ 1.")
  _check(t.batch_size >= 1, f"config.train.batch_size={t.batch_size} must be ≥ 1.")
  _check(t.lr > 0, f"config.train.lr={t.lr} must be > 0.")
  _check(t.warmup_steps >= 0, f"config.train.warmup_steps={t.warmup_steps} must be ≥ 0.")
  _check(0.0 <= t.p_uncond < 1.0, f"config.train.p_uncond={t.p_uncond} must lie in [0, 1).")
  _check(0.0 <= t.ema_decay < 1.0, f"config.train.ema_decay={t.ema_decay} must lie in [0, 1).")
  _check(t.grad_clip > 0, f"config.train.grad_clip={t.grad_clip} must be > 0.")
  _check(t.checkpoint_every >= 1 and t.log_every >= 1,
         "config.train.checkpoint_every and log_every must be ≥ 1.")
  _check(t.max_to_keep >= 1, f"config.train.max_to_keep={t.max_to_keep} must be ≥ 1.")
  _check(d.resolution >= 4, f"config.data.resolution={d.resolution} must be ≥ 4.")
  expected_channels = 3 if d.name == "cifar10" else 1
  _check(d.channels == expected_channels,
         f"config.data.channels={d.channels} but {d.name} has {expected_channels} channel(s).")
  unet_config(config).validate()
  if is_text(config):
    from minidiff import captions  # local: only text configs need it
    captions.dataset_family(d.name)  # raises for a dataset without captions
    _check(d.num_duplicated_per_class > 0 or d.dup_fraction > 0,
           "A text scenario gives its duplicated images unique captions: set "
           "config.data.num_duplicated_per_class ≥ 1 or config.data.dup_fraction > 0.")
  duplication_spec(config).validate(data_lib.NUM_CLASSES.get(d.name, 10))


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
