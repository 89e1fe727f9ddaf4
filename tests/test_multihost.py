"""Two real processes on localhost against one process with two simulated devices.

`parallel.multi_host=True` with the coordinator on 127.0.0.1 and one CPU device per process: JAX's
CPU collectives (gloo, jax's default) carry the gradient all-reduce, `make_array_from_process_local_data`
assembles each global batch from the rows each process loads, and Orbax writes one checkpoint from
both. The reference is the same command in one process with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`: the same ("data",) mesh of two devices, the
same rows on each, so the two runs may differ only in how the two partial sums meet.

  * training: two `train.py` processes for 3 steps of the tiny config; their final checkpoint
    (params, EMA, optimizer state) equals the two-device run's within TRAIN_ATOL;
  * sampling: this file run as a script in two processes (distributed init, then
    `sampling.run_strategy` on the two-process mesh, gathered with `process_allgather`) equals the
    same samples drawn here on one device within SAMPLE_ATOL.

The two processes share one workdir (what a shared filesystem gives a cluster's hosts): process 0
alone writes config.json, manifest.json and metrics.jsonl, so the log holds each logged step once,
and a workdir that process 0 refuses stops both processes.
"""
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script, the processes import minidiff and configs from here

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Measured: the two-process checkpoint equals the two-device one bitwise (max |Δ| = 0 over its 286
# leaves), and two-process samples equal one device's to 3.0e-7; 1e-5 is the stated tolerance for
# both (as for 8 simulated devices in test_sharding.py): gloo may sum the two shards in another order.
TRAIN_ATOL = 1e-5
SAMPLE_ATOL = 1e-5
STEPS = 3
# Smaller than configs/tiny.py (one level; the middle block keeps its attention) and compiled at
# LLVM -O0: every process here compiles the step once, and compiling is most of this test's time.
MODEL = ["--config.model.channel_mults=(1,)", "--config.model.attention_resolutions=()"]
FAST_COMPILE = "--xla_backend_optimization_level=0"
TIMEOUT_S = 600  # a hung process (e.g. waiting for a dead peer) fails the test after this


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _multi_host_flags(port: int, process_id: int) -> list[str]:
  return ["--config.parallel.multi_host=True",
          f"--config.parallel.coordinator_address=127.0.0.1:{port}",
          "--config.parallel.num_processes=2", f"--config.parallel.process_id={process_id}"]


def _train_cmd(workdir: str, *extra: str) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "tiny.py"),
          "--workdir", workdir, f"--config.train.steps={STEPS}", f"--config.train.log_every={STEPS}",
          f"--config.train.checkpoint_every={STEPS}", *MODEL, *extra]


def _env(num_devices: int) -> dict:
  from minidiff import runtime
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{runtime.cpu_xla_flags(num_devices)} {FAST_COMPILE}")
  env.pop("MINIDIFF_CPU_DEVICES", None)
  return env


def _run_all(cmds: list[tuple[list[str], dict]], logdir: str, *, check: bool = True) -> list[tuple[int, str]]:
  """Starts every command at once and waits; returns each one's (exit status, log).

  `check`: on a failure or time-out, kill the rest and fail the test. Otherwise every process is
  waited for (a time-out still fails the test).
  """
  procs = []
  for i, (cmd, env) in enumerate(cmds):
    log = open(os.path.join(logdir, f"proc{i}.log"), "w")
    procs.append((subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p, _ in procs):
      failed = [i for i, (p, _) in enumerate(procs) if p.returncode not in (None, 0)]
      if (check and failed) or time.monotonic() > deadline:
        break
      time.sleep(0.1)
  finally:
    timed_out = [i for i, (p, _) in enumerate(procs) if p.poll() is None]
    for p, log in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
      log.close()
  logs = [open(os.path.join(logdir, f"proc{i}.log")).read() for i in range(len(procs))]
  bad = [(i, p.returncode) for i, (p, _) in enumerate(procs)
         if p.returncode != 0 and (check or i in timed_out)]
  if bad:
    tails = "\n".join(f"--- process {i} (exit {rc}):\n" + logs[i][-3000:] for i, rc in bad)
    pytest.fail(f"processes {bad} failed or timed out after {TIMEOUT_S} s:\n{tails}")
  return [(p.returncode, text) for (p, _), text in zip(procs, logs)]


def _flat(state) -> dict:
  import jax
  tree = dict(params=state.params, ema=state.ema_params, opt=state.opt_state)
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _restore(workdir: str) -> tuple[dict, dict]:
  """{leaf path: array} of the final checkpoint's params, EMA and optimizer state, and of the init."""
  from configs import tiny
  from minidiff.train import state as train_state
  from minidiff.train.checkpoint import Checkpointer
  config = tiny.get_config()
  config.model.channel_mults, config.model.attention_resolutions = (1,), ()  # MODEL
  _, template, _ = train_state.init_state(config)
  ckpt = Checkpointer(workdir)
  restored = train_state.restore_state(ckpt, template)
  ckpt.close()
  assert restored.step == STEPS, restored.step
  return _flat(restored), _flat(template)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(workdir of the two-process run, workdir of the one-process two-device run), both trained."""
  base = tmp_path_factory.mktemp("multihost")
  shared, ref = str(base / "two_processes"), str(base / "two_devices")
  port = _free_port()
  _run_all([(_train_cmd(shared, *_multi_host_flags(port, 0)), _env(1)),
            (_train_cmd(shared, *_multi_host_flags(port, 1)), _env(1)),
            (_train_cmd(ref), _env(2))], str(base))
  return shared, ref, base


def test_two_processes_train_like_two_devices(runs):
  shared, ref, _ = runs
  logs = [open(os.path.join(d, "metrics.jsonl")).read().splitlines() for d in (shared, ref)]
  assert [json.loads(line)["step"] for line in logs[0]] == [STEPS]  # once: process 0 alone writes
  assert sorted(os.listdir(shared)) == sorted(os.listdir(ref))  # config.json, manifest.json, …
  assert json.load(open(os.path.join(shared, "config.json")))["parallel"]["process_id"] == 0
  losses = [json.loads(lines[-1])["loss"] for lines in logs]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  (two_proc, init), (two_dev, _) = _restore(shared), _restore(ref)
  assert two_proc.keys() == two_dev.keys() and len(two_proc) > 10
  diffs = {k: float(np.abs(two_proc[k] - two_dev[k]).max()) for k in two_dev}
  worst = max(diffs.items(), key=lambda kv: kv[1])
  assert worst[1] <= TRAIN_ATOL, worst
  moved = max(float(np.abs(two_proc[k] - init[k]).max()) for k in init if k.startswith("['params']"))
  assert moved > 1e-4  # the parameters did train: this is not the equality of two untouched inits


def test_two_processes_sample_like_one_device(runs):
  from minidiff.study import sampling
  from minidiff.train import sharding
  shared, _, base = runs
  port = _free_port()
  out = str(base / "samples.npz")
  _run_all([([sys.executable, os.path.abspath(__file__), shared, str(port), str(i), out], _env(1))
            for i in range(2)], str(base))
  two_proc = np.load(out)["samples"]
  config, eps_apply, params, schedule, null_id, _ = sampling.load_sampling_model(shared)
  options, x_T, labels, key, spec = _sampling_inputs(config)  # noqa: N806
  one = sampling.run_strategy(eps_apply, params, schedule, spec, options, x_T, labels, key,
                              null_id=null_id, mesh=sharding.data_mesh(1)).samples
  assert two_proc.shape == one.shape == (8, 8, 8, 1)
  assert np.isfinite(one).all() and one.std() > 0.1
  np.testing.assert_allclose(two_proc, one, atol=SAMPLE_ATOL)


def test_a_workdir_that_process_0_refuses_stops_both_processes(tmp_path):
  """Only process 0 checks config.json; when it refuses the workdir (another run's checkpoints),
  process 1 must stop too, told so, not wait for process 0 in the first collective."""
  from configs import tiny
  from minidiff import config as config_lib
  workdir = str(tmp_path / "other_run")
  other = tiny.get_config()
  other.model.base_channels = 16
  config_lib.check_or_write_workdir_config(other, workdir)
  os.makedirs(os.path.join(workdir, "checkpoints", "3"))  # something trained with it
  saved = open(os.path.join(workdir, "config.json")).read()
  port = _free_port()
  results = _run_all([(_train_cmd(workdir, *_multi_host_flags(port, i)), _env(1)) for i in range(2)],
                     str(tmp_path), check=False)
  (rc0, log0), (rc1, log1) = results
  assert rc0 == 2 and "holds a run trained with a different config" in log0, log0[-2000:]
  assert rc1 == 2 and "Process 0 refused the workdir" in log1, log1[-2000:]
  assert open(os.path.join(workdir, "config.json")).read() == saved  # nothing was changed


def test_replicated_arrays_built_per_host_keep_values_and_keys():
  """The multi-host branch of sharding.replicate, run on one process: values, key type, sharding."""
  import jax
  from jax.sharding import PartitionSpec

  from minidiff.train import sharding
  target = sharding.replicated(sharding.data_mesh(1))
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  key = jax.random.fold_in(jax.random.key(3), 7)
  ra, rk = (sharding._global_replicated(x, target) for x in (a, key))
  np.testing.assert_array_equal(np.asarray(ra), a)
  assert ra.sharding.spec == PartitionSpec() and rk.sharding.spec == PartitionSpec()
  assert jax.random.key_impl(rk) == jax.random.key_impl(key)
  np.testing.assert_array_equal(jax.random.key_data(rk), jax.random.key_data(key))
  np.testing.assert_array_equal(jax.random.normal(rk, (3,)), jax.random.normal(key, (3,)))


def _sampling_inputs(config):
  from minidiff.core import specs
  from minidiff.study import sampling
  options = sampling.options_from_config(config, num=8, classes=(0, 1), batch=8)
  x_T, labels, key = sampling.shared_inputs(options, shape=(8, 8, 1), num_classes=10)  # noqa: N806
  return options, x_T, labels, key, specs.parse_guidance("cfg", T=config.diffusion.T)[0]


def _sample_process(workdir: str, port: int, process_id: int, out: str) -> None:
  """Runs in each of the two sampling processes: CFG samples on the two-process mesh."""
  from minidiff import runtime
  runtime.configure_cpu()
  import jax

  from minidiff import config as config_lib
  from minidiff.study import sampling
  from minidiff.train import sharding
  config = config_lib.load_workdir_config(workdir)
  config.parallel.update(multi_host=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                         process_id=process_id)
  sharding.initialize_distributed(config)
  mesh = sharding.mesh_from_config(config)
  assert jax.process_count() == 2 and mesh.size == 2 and len(jax.local_devices()) == 1
  config, eps_apply, params, schedule, null_id, _ = sampling.load_sampling_model(workdir)
  options, x_T, labels, key, spec = _sampling_inputs(config)  # noqa: N806
  samples = sampling.run_strategy(eps_apply, params, schedule, spec, options, x_T, labels, key,
                                  null_id=null_id, mesh=mesh).samples
  if process_id == 0:
    np.savez(out, samples=samples)


if __name__ == "__main__":
  _sample_process(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
