"""Shared test setup: a persistent XLA compilation cache so identical programs compile once per run."""
import fcntl
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` is importable from the tests
CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".cache", "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
from minidiff import runtime  # noqa: E402

runtime.configure_cpu()

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture
def tiny_config():
  from configs import tiny
  return tiny.get_config()


def _shared_run(tmp_path_factory, name: str, config) -> str:
  """Trains `config` once per test session into a workdir that every xdist worker shares.

  The first worker to ask trains under an exclusive file lock; the others wait on the lock and
  then reuse the finished workdir (tests only read it: they write their outputs to tmp_path).
  Without xdist the base temp folder is this process's own."""
  from minidiff.train import trainer
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  workdir, done = root / name, root / f"{name}.done"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # a worker that died mid-training
      trainer.train_and_evaluate(config, str(workdir))
      done.touch()
  return str(workdir)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A workdir with a 6-step tiny training run (shared by the sampling and study tests)."""
  from configs import tiny
  return _shared_run(tmp_path_factory, "tiny_run", tiny.get_config())


@pytest.fixture(scope="session")
def tiny_run_seed1(tmp_path_factory):
  """The tiny run's config at seed 1: a second training seed for the pooled study tests."""
  from configs import tiny
  config = tiny.get_config()
  config.seed = 1
  return _shared_run(tmp_path_factory, "tiny_run_seed1", config)


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory):
  """A workdir with the tiny text model trained to copy its one captioned image (the only text
  training in the suite; shared by the text tests)."""
  from configs import tiny_text
  return _shared_run(tmp_path_factory, "tiny_text_run", tiny_text.get_config())
