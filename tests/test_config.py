import json
import os
from unittest import mock

import hypothesis
import hypothesis.strategies as st
import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from minidiff import config as config_lib


def _parse(argv):
  """Parses like train.py (config_flags reads the overrides from sys.argv)."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv)
  with mock.patch("sys.argv", ["train.py"] + argv):
    fv(["train.py"] + argv)
  return fv.config


def test_dotted_overrides_from_the_command_line():
  c = _parse(["--config=configs/mnist_dup.py", "--config.train.steps=7",
              "--config.data.duplicated_classes=(1,2)", "--config.model.base_channels=16"])
  assert c.train.steps == 7 and tuple(c.data.duplicated_classes) == (1, 2)
  assert config_lib.unet_config(c).base_channels == 16
  config_lib.validate_config(c)


def test_variants_derive_from_the_default():
  c = _parse(["--config=configs/cifar10_dup.py"])
  u = config_lib.unet_config(c)
  assert (u.resolution, u.in_channels, u.base_channels, u.num_res_blocks) == (32, 3, 128, 2)
  assert c.train.batch_size == 512
  config_lib.validate_config(c)


def _with(config, **changes):
  """A copy of `config` with dotted fields replaced, without ConfigDict's type locking."""
  d = config.to_dict()
  for key, value in changes.items():
    *path, last = key.split("__")
    node = d
    for part in path:
      node = node[part]
    if value is _DELETE:
      del node[last]
    else:
      node[last] = value
  return ml_collections.ConfigDict(d)


_DELETE = object()


@pytest.mark.parametrize("field, value, match", [
    # ranges
    ("data.name", "svhn", "config.data.name='svhn' is unknown; choose one of mnist_offline"),
    ("train.p_uncond", 1.5, r"config.train.p_uncond=1.5 must lie in \[0, 1\)"),
    ("train.p_uncond", -0.1, "config.train.p_uncond"),
    ("train.ema_decay", 1.0, r"config.train.ema_decay=1.0 must lie in \[0, 1\)"),
    ("train.lr", 0.0, "config.train.lr=0.0 must be > 0"),
    ("train.lr", -1e-3, "config.train.lr"),
    ("train.steps", 0, "config.train.steps=0 must be ≥ 1"),
    ("train.batch_size", 0, "config.train.batch_size=0 must be ≥ 1"),
    ("train.warmup_steps", -1, "config.train.warmup_steps"),
    ("train.weight_decay", -0.1, "config.train.weight_decay"),
    ("train.grad_clip", 0.0, "config.train.grad_clip"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every=0 must be ≥ 1"),
    ("train.log_every", 0, "config.train.log_every=0"),
    ("train.max_to_keep", 0, "config.train.max_to_keep=0"),
    ("seed", -1, "config.seed=-1 must be ≥ 0"),
    ("diffusion.T", 1, "config.diffusion.T=1 must be ≥ 2"),
    ("diffusion.schedule", "sigmoid", "config.diffusion.schedule='sigmoid': use 'linear' or 'cosine'"),
    ("data.resolution", 7, r"config.data.resolution=7 is not divisible by 2\^1 = 2 .*fewer channel_mults"),
    ("data.resolution", 2, "config.data.resolution=2 must be ≥ 4"),
    ("data.channels", 3, r"config.data.channels=3 but mnist_offline has 1 channel"),
    ("model.attention_resolutions", (3,), r"contains \[3\], which no level has; the feature-map sizes are \[8, 4\]"),
    ("model.channel_mults", (), "config.model.channel_mults=.* must be one or more integers"),
    ("model.channel_mults", (1, 0), "config.model.channel_mults"),
    ("model.num_groups", 3, "config.model.num_groups=3 does not divide the channel count 8"),
    ("model.num_heads", 3, "config.model.num_heads=3 does not divide the channel count 16"),
    ("model.dropout", 1.0, "config.model.dropout"),
    ("model.base_channels", 0, "config.model.base_channels=0 must be ≥ 1"),
    ("data.n_unique_per_class", 0, "config.data: n_unique_per_class=0 must be ≥ 1"),
    ("data.n_unique_per_class", 501, "n_unique_per_class=501 but mnist_offline has only 500 images per class"),
    ("data.num_duplicated_per_class", 5, r"num_duplicated_per_class=5 must lie in \[0, n_unique_per_class=4\]"),
    ("data.dup_factor", 1, "dup_factor ≥ 2"),
    ("data.dup_fraction", 1.5, "dup_fraction=1.5"),
    ("data.duplicated_classes", (0, 10), r"duplicated_classes contains \[10\]"),
    ("sample.sampler", "euler", "config.sample.sampler='euler': choose one of ddim, ddpm"),
    ("sample.num_steps", 101, r"config.sample.num_steps=101 must lie in \[1, T=100\]"),
    ("sample.eta", 2.0, "config.sample.eta"),
    ("sample.spacing", "log", "config.sample.spacing='log'"),
    ("study.num_samples", 0, "config.study.num_samples=0 must be ≥ 1"),
    ("study.classifier_epochs", 0, "config.study.classifier_epochs=0"),
    ("study.guidance", "cfg,stattic:tau=50", "config.study.guidance=.*Unknown guidance strategy 'stattic'"),
    ("study.guidance", "static:tau=100", r"config.study.guidance=.*tau must lie in \[0, T\) = \[0, 100\)"),
    ("study.guidance", "cfg:w=nan", "config.study.guidance=.*w must be a finite number"),
    # types (a config file can hold anything; a command-line override is typed by ml_collections)
    ("train.steps", 10.0, "config.train.steps=10.0 must be an integer"),
    ("train.steps", True, "config.train.steps=True must be an integer"),
    ("train.lr", "1e-3", "config.train.lr='1e-3' must be a finite number"),
    ("train.lr", float("inf"), "config.train.lr=inf must be a finite number"),
    ("train.p_uncond", float("nan"), "config.train.p_uncond=nan must be a finite number"),
    ("sample.clip_x0", 1, "config.sample.clip_x0=1 must be True or False"),
    ("model.fused_layers", 1, "config.model.fused_layers=1 must be True or False"),
    ("model.channel_mults", (1, 2.5), "config.model.channel_mults=.* must be a tuple of integers"),
    ("data.name", 3, "config.data.name=3 must be a string"),
    ("train.lr", _DELETE, "config.train.lr is missing; add it"),
])
def test_validation_errors_name_the_field_and_what_to_change(tiny_config, field, value, match):
  config = _with(tiny_config, **{field.replace(".", "__"): value})
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(config)


def test_every_shipped_config_is_valid():
  from configs import cifar10_dup, mnist_dup, tiny
  for module in (mnist_dup, tiny, cifar10_dup):
    config_lib.validate_config(module.get_config())


# A perturbation: one field set to a value of any of the types a config file could hold.
_ANY_VALUE = st.one_of(
    st.integers(-3, 2000), st.floats(allow_nan=True, allow_infinity=True, width=32), st.booleans(),
    st.sampled_from(["", "cfg", "linear", "ddim", "svhn", "uniform"]),
    st.tuples(st.integers(-1, 16), st.integers(0, 16)), st.just(()), st.none())


@hypothesis.settings(max_examples=120, deadline=None, derandomize=True)
@hypothesis.given(key=st.sampled_from(sorted(config_lib.FIELD_TYPES)), value=_ANY_VALUE)
def test_property_any_bad_value_is_a_value_error_naming_a_field(key, value):
  from configs import tiny
  config = _with(tiny.get_config(), **{key.replace(".", "__"): value})
  try:
    config_lib.validate_config(config)
  except ValueError as e:  # never a TypeError / KeyError / ZeroDivisionError from deep inside
    assert "config." in str(e), str(e)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(steps=st.integers(1, 10**6), lr=st.floats(1e-6, 1.0), p_uncond=st.floats(0.0, 0.99),
                  classes=st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True),
                  guidance=st.sampled_from(["cfg", "cfg:w=3,static:tau=50", "dynamic,interval"]))
def test_property_dotted_overrides_parse_validate_and_round_trip_through_config_json(
    tmp_path_factory, steps, lr, p_uncond, classes, guidance):
  c = _parse(["--config=configs/tiny.py", f"--config.train.steps={steps}", f"--config.train.lr={lr!r}",
              f"--config.train.p_uncond={p_uncond!r}",
              f"--config.data.duplicated_classes=({','.join(map(str, classes))},)",
              f"--config.study.guidance={guidance}"])
  assert (c.train.steps, c.train.lr, c.train.p_uncond) == (steps, lr, p_uncond)
  assert tuple(c.data.duplicated_classes) == tuple(classes) and c.study.guidance == guidance
  config_lib.validate_config(c)
  workdir = str(tmp_path_factory.mktemp("w"))
  config_lib.check_or_write_workdir_config(c, workdir)
  back = config_lib.load_workdir_config(workdir)
  assert config_lib.flatten(back) == config_lib.flatten(c)
  config_lib.check_or_write_workdir_config(back, workdir)  # the saved config resumes itself


def test_workdir_config_guard(tiny_config, tmp_path):
  workdir = str(tmp_path)
  config_lib.check_or_write_workdir_config(tiny_config, workdir)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["train"]["steps"] == tiny_config.train.steps
  tiny_config.train.steps = 99  # resuming with more steps is allowed …
  config_lib.check_or_write_workdir_config(tiny_config, workdir)
  os.makedirs(os.path.join(workdir, "checkpoints", "3"))  # something trained: then …
  tiny_config.model.base_channels = 16  # … a different model is not.
  with pytest.raises(ValueError, match=r"model.base_channels: saved 8 → given 16"):
    config_lib.check_or_write_workdir_config(tiny_config, workdir)
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["base_channels"] == 8
  back = config_lib.load_workdir_config(workdir)
  assert back.train.steps == 99 and tuple(back.model.channel_mults) == (1, 2)


def test_a_saved_config_without_fused_layers_is_the_plain_layers(tiny_config, tmp_path):
  workdir = str(tmp_path)
  config_lib.check_or_write_workdir_config(tiny_config, workdir)
  path = os.path.join(workdir, "config.json")
  saved = json.load(open(path))
  assert saved["model"]["fused_layers"] is False  # every shipped config: the plain layers
  del saved["model"]["fused_layers"]  # a run saved before the field existed …
  json.dump(saved, open(path, "w"))
  os.makedirs(os.path.join(workdir, "checkpoints", "3"))
  assert config_lib.unet_config(config_lib.load_workdir_config(workdir)).fused_layers is False
  config_lib.check_or_write_workdir_config(tiny_config, workdir)  # … resumes with the default
  tiny_config.model.fused_layers = True  # but not with the fused layers: not bitwise the same run
  with pytest.raises(ValueError, match=r"model.fused_layers: saved False → given True"):
    config_lib.check_or_write_workdir_config(tiny_config, workdir)


def test_missing_workdir_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    config_lib.load_workdir_config(str(tmp_path))


@pytest.mark.parametrize("field, value, match", [
    ("model.compute_dtype", "float16", "compute_dtype='float16'"),
    ("parallel.num_devices", -1, "num_devices=-1"),
    ("parallel.process_id", 4, r"process_id=4 must lie in \[0, num_processes=2\)"),
])
def test_parallel_and_precision_fields(tiny_config, field, value, match):
  section, key = field.split(".")
  tiny_config[section][key] = value
  tiny_config.parallel.update(multi_host=True, coordinator_address="host:1234", num_processes=2)
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(tiny_config)
