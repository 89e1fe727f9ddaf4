"""minidiff: a minimal JAX diffusion codebase for studying memorization and guidance.

  import minidiff                                  # first: the CPU settings apply before JAX starts
  run = minidiff.load("runs/mnist_dup")           # a trained workdir's EMA model
  out = run.sample("cfg:w=3", classes=[3, 7], num=20, seed=0)

Subpackages, bottom up (tests/test_layers.py keeps the imports one way): `core` (schedules,
guidance, samplers, spec parsing), `data`, `theory`, `metrics`, `nn`, then `config`, `train`,
`study` and `api` (load / sample / jitted_sampler, docs/api.md). The names below are re-exported
lazily: `import minidiff` loads neither JAX nor the trainer until one of them is used.

Importing minidiff applies `runtime.configure_cpu()` (XLA's multi-core convolutions on CPU and a
malloc setting; training is several times slower without them) unless MINIDIFF_CPU=off, XLA_FLAGS
is already set, or JAX has already started a backend (then it warns: import minidiff first).
"""
from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

from minidiff import runtime as _runtime


def _configure_cpu() -> None:
  """runtime.configure_cpu(), unless JAX's backends already started (flags would not apply)."""
  started = False
  if "jax" in sys.modules:
    try:
      from jax._src import xla_bridge
      started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
      started = False
  if started:
    if _runtime.os.environ.get("MINIDIFF_CPU", "").lower() != "off" and "XLA_FLAGS" not in _runtime.os.environ:
      warnings.warn("minidiff was imported after JAX started: its CPU settings (runtime.configure_cpu) "
                    "cannot apply, and training on CPU runs several times slower. Import minidiff "
                    "before running anything in JAX.", stacklevel=3)
    return
  _runtime.configure_cpu()


_configure_cpu()

_EXPORTS = {
    "load": "minidiff.api",
    "Run": "minidiff.api",
    "jitted_sampler": "minidiff.api",
    "weight_schedule": "minidiff.core.weight_fn",
    "StepSignals": "minidiff.core.weight_fn",
    "make_schedule": "minidiff.core.schedule",
    "make_strategy": "minidiff.core.specs",
    "make_rule": "minidiff.core.registry",
    "Rule": "minidiff.core.rule",
    "make_sampler": "minidiff.core.samplers",
    "parse_guidance": "minidiff.core.specs",
    "parse_specs": "minidiff.core.specs",
    "UNet": "minidiff.nn.unet",
    "UNetConfig": "minidiff.nn.unet",
    "load_ema_model": "minidiff.train.state",
    "train_and_evaluate": "minidiff.train.trainer",
    "sample_and_study": "minidiff.study.engine",
    "run_study": "minidiff.study.engine",
    "StudyOptions": "minidiff.study.engine",
    "expand_specs": "minidiff.core.specs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  """Imports the module of a re-exported name on first use."""
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'minidiff' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
