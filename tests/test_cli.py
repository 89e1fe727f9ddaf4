"""The command lines as a newcomer meets them: --help lists the config fields and the strategies
with their defaults, a bad flag or value is one line and exit status 2 (--debug keeps the
traceback), a corrupt config.json names its path, and a start that fails before its first
checkpoint leaves the workdir reusable."""
import json
import os
import subprocess
import sys

import pytest

from minidiff import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, *args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=ROOT))


def _one_line_error(p: subprocess.CompletedProcess, match: str) -> None:
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  assert p.returncode == 2, p.stderr[-2000:]
  assert "Traceback" not in p.stderr, p.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], p.stderr


def test_train_bad_flags_and_overrides_are_one_line_and_exit_2():
  _one_line_error(_run("train.py", "--config.train.stepz=5"), 'no such config field (stepz Did you mean "steps"')
  _one_line_error(_run("train.py", "--config.train.steps=abc"), "--config.train.steps=abc")
  _one_line_error(_run("train.py", "--config=nope.py"), "--config=nope.py does not load")


def test_train_helpconfig_lists_every_field_with_its_default(tmp_path):
  p = _run("train.py", "--helpconfig", cwd=str(tmp_path))  # the default config from any folder
  assert p.returncode == 0, p.stderr[-2000:]
  assert "--config.train.steps=3600  (int)" in p.stdout
  assert "--config.data.data_dir=''  (str)" in p.stdout
  assert len([line for line in p.stdout.splitlines() if line.startswith("  --config.")]) >= 40


def test_sample_help_lists_the_strategies_with_their_parameters_and_defaults():
  p = _run("sample.py", "--help")  # absl's --help exits with status 1 after printing
  out = p.stdout + p.stderr
  assert "Traceback" not in out, out[-2000:]
  assert "opposite          tau=650 w_post=7.5 s=2.0" in out
  assert "static with w_pre = -s: opposite guidance before tau (Jain et al.)" in out  # its help
  assert "rescaled_cfg      w=7.5 phi=0.7" in out  # a rule file of minidiff/core/rules/
  assert "random_tokens     k=4" in out
  assert "wen               w=7.5 target=0.07 steps=10 lr=0.1" in out
  assert "peak_drop         w_pre=0.0 w_post=7.5 measure=x0 fraction=0.5 min_step=2" in out
  assert "--step" in out


def test_sample_bad_values_are_one_line_and_debug_keeps_the_traceback(tmp_path):
  _one_line_error(_run("sample.py", "--classes", "3,x"), "--classes=3,x: expected comma-separated")
  p = _run("sample.py", "--classes", "3,x", "--debug")
  assert p.returncode == 2 and "Traceback" in p.stderr


def test_corrupt_config_json_names_its_path_and_what_to_do(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": 0, "data": {"name": "mni')  # cut short
  with pytest.raises(ValueError, match=r"config.json is not valid JSON .* Restore it, or delete it"):
    config_lib.load_workdir_config(str(tmp_path))
  _one_line_error(_run("sample.py", "--workdir", str(tmp_path)), str(tmp_path / "config.json"))


def test_a_start_that_fails_before_its_first_checkpoint_leaves_the_workdir_reusable(
    tiny_config, tmp_path):
  from minidiff.train import trainer  # noqa: PLC0415
  workdir = str(tmp_path / "w")
  broken = tiny_config.copy_and_resolve_references()
  broken.data.name, broken.data.data_dir = "mnist", str(tmp_path / "no_data")
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    trainer.train_and_evaluate(broken, workdir)  # fails on the data, after writing config.json
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["name"] == "mnist"
  config_lib.check_or_write_workdir_config(tiny_config, workdir)  # not refused: nothing trained
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["name"] == "mnist_offline"
  os.makedirs(os.path.join(workdir, "checkpoints", "3"))  # once a checkpoint exists: refused
  with pytest.raises(ValueError, match="data.name: saved 'mnist_offline' → given 'mnist'"):
    config_lib.check_or_write_workdir_config(broken, workdir)
