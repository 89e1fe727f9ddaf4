import json
import os
from unittest import mock

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


@pytest.mark.parametrize("field, value, match", [
    ("data.name", "svhn", "config.data.name='svhn' is unknown"),
    ("train.p_uncond", 1.5, "p_uncond"),
    ("train.steps", 0, "train.steps"),
    ("data.resolution", 7, "not divisible"),
    ("model.attention_resolutions", (3,), "no level has"),
    ("data.n_unique_per_class", 0, "n_unique_per_class"),
    ("data.dup_factor", 1, "dup_factor ≥ 2"),
    ("data.channels", 3, "channel"),
    ("diffusion.schedule", "sigmoid", "schedule"),
])
def test_validation_errors_name_the_field(tiny_config, field, value, match):
  section, key = field.split(".")
  setattr(tiny_config[section], key, value)
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(tiny_config)


def test_workdir_config_guard(tiny_config, tmp_path):
  workdir = str(tmp_path)
  config_lib.check_or_write_workdir_config(tiny_config, workdir)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["train"]["steps"] == tiny_config.train.steps
  tiny_config.train.steps = 99  # resuming with more steps is allowed …
  config_lib.check_or_write_workdir_config(tiny_config, workdir)
  tiny_config.model.base_channels = 16  # … a different model is not.
  with pytest.raises(ValueError, match=r"model.base_channels: saved 8 → given 16"):
    config_lib.check_or_write_workdir_config(tiny_config, workdir)
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["base_channels"] == 8
  back = config_lib.load_workdir_config(workdir)
  assert back.train.steps == 99 and tuple(back.model.channel_mults) == (1, 2)


def test_missing_workdir_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    config_lib.load_workdir_config(str(tmp_path))
