"""Process-level settings that must be made before JAX is imported (see ENV-NOTES.md)."""
import os

# XLA:CPU's default (YNNPACK) convolutions use one core on this jaxlib; its Eigen ones use all of
# them (measured: 100 → 147 img/s for the 1.1M-parameter UNet at 28×28 on 2 cores).
CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def configure_cpu() -> None:
  """Adds the CPU XLA flags unless the user set XLA_FLAGS themselves. Call before importing JAX."""
  if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = CPU_XLA_FLAGS
