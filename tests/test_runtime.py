import sys

from minidiff import runtime


def test_flags_and_user_settings(monkeypatch):
  assert runtime.cpu_xla_flags(1) == runtime.EIGEN_CONVOLUTIONS
  assert runtime.cpu_xla_flags(2).endswith("--xla_force_host_platform_device_count=2")
  monkeypatch.setenv("XLA_FLAGS", "--my_flag")
  runtime.configure_cpu(num_devices=2)
  assert runtime.os.environ["XLA_FLAGS"] == "--my_flag"  # the user's flags are kept
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("MINIDIFF_CPU", "off")
  runtime.configure_cpu()
  assert "XLA_FLAGS" not in runtime.os.environ  # MINIDIFF_CPU=off: plain XLA
  monkeypatch.setenv("MINIDIFF_CPU", "")
  monkeypatch.setenv("MINIDIFF_CPU_DEVICES", "2")
  runtime.configure_cpu()
  assert runtime.os.environ["XLA_FLAGS"] == runtime.cpu_xla_flags(2)


def test_tune_malloc_applies_on_glibc():
  assert runtime.tune_malloc() is sys.platform.startswith("linux")
