"""Process-level CPU settings that must be made before JAX is imported (see docs/performance.md).

Measured on a 2-core AVX-512 machine (jaxlib 0.10.2) for the 1.1M-parameter UNet
(benchmarks/bench.py, docs/performance.md):
  * XLA:CPU's default YNNPACK convolutions run on one core and their backward pass is slow; its
    Eigen ones use every core (4× faster training step at 28×28).
  * glibc returns the step's large temporaries to the OS and page-faults them back on every call;
    keeping them in the heap (mallopt) saves ~15% of a training step.
  * One simulated device per core (a ("data",) mesh splitting each batch, minidiff/train/sharding.py)
    helps YNNPACK convolutions but adds nothing once Eigen's use both cores: off by default
    (MINIDIFF_CPU_DEVICES=2 turns it on).
`configure_cpu()` applies what helps; set MINIDIFF_CPU=off to get plain XLA (benchmarks compare).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

EIGEN_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


def tune_malloc() -> bool:
  """Keeps freed memory in the heap instead of unmapping it (glibc only). Returns whether it applied.

  Same effect as GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=…, which would
  have to be set before the process starts.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False
  ok = [mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, 2**31 - 1),
        mallopt(_M_TOP_PAD, 256 << 20), mallopt(_M_ARENA_MAX, 1)]
  return all(ok)


def cpu_xla_flags(num_devices: int) -> str:
  """XLA flags for this CPU: Eigen convolutions, and `num_devices` simulated devices when > 1."""
  flags = [EIGEN_CONVOLUTIONS]
  if num_devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  return " ".join(flags)


def configure_cpu(num_devices: int | None = None) -> None:
  """Applies the CPU settings unless MINIDIFF_CPU=off. Call before importing JAX.

  XLA_FLAGS set by the user are kept as they are. `num_devices` simulated CPU devices (default:
  MINIDIFF_CPU_DEVICES, else 1) make the data-parallel mesh split each batch over the cores; they
  only affect the CPU platform, so GPU/TPU runs are unchanged.
  """
  if os.environ.get("MINIDIFF_CPU", "").lower() == "off":
    return
  if num_devices is None:
    num_devices = int(os.environ.get("MINIDIFF_CPU_DEVICES", "1"))
  if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = cpu_xla_flags(num_devices)
  tune_malloc()
