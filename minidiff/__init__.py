"""minidiff: a minimal JAX diffusion codebase for studying memorization and guidance.

Subpackages, bottom up (tests/test_layers.py keeps the imports one way): `core` (schedules,
guidance, samplers, spec parsing), `data`, `theory`, `metrics`, `nn`, then `config`, `train` and
`study`. The names below are re-exported lazily: `import minidiff` loads neither JAX nor the
trainer until one of them is used.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_schedule": "minidiff.core.schedule",
    "make_strategy": "minidiff.core.guidance",
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
