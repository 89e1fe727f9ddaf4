"""Data parallelism with jax.sharding: one ("data",) mesh, replicated state, batch-sharded inputs.

The same jitted train step and sampler run on one device or many: state is placed replicated
(`PartitionSpec()`), every batch is split along its first axis (`PartitionSpec("data")`), and XLA
inserts the gradient all-reduce. No pmap. With several hosts (`parallel.multi_host`) each process
calls `jax.distributed.initialize()`, builds only its own rows of every global batch, and the global
array is assembled with `jax.make_array_from_process_local_data`.

Random draws use jax's partitionable threefry (the default), so a sharded step draws the same
numbers as an unsharded one; results on N devices differ from one device only by the order of
floating-point reductions.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when config.parallel.multi_host; call before other JAX use.

  With empty coordinator settings JAX detects the cluster (SLURM, Cloud TPU, Open MPI) itself.
  """
  p = config.get("parallel", None)
  if p is None or not p.multi_host or jax.distributed.is_initialized():
    return
  kwargs = {}
  if p.coordinator_address:
    kwargs = dict(coordinator_address=p.coordinator_address, num_processes=p.num_processes,
                  process_id=p.process_id)
  jax.distributed.initialize(**kwargs)


def data_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ("data",) mesh over the first `num_devices` devices (0: every device of every host)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ValueError(f"parallel.num_devices={num_devices}, but {len(devices)} devices are visible "
                     f"({devices[0].platform}); use 0 for all of them or a number ≤ {len(devices)}.")
  if num_devices and jax.process_count() > 1 and num_devices != len(devices):
    raise ValueError("With several hosts the mesh spans every device: set parallel.num_devices=0.")
  return Mesh(np.asarray(devices[:num_devices or len(devices)]), (DATA_AXIS,),
              axis_types=(AxisType.Auto,))


def mesh_from_config(config: ml_collections.ConfigDict) -> Mesh:
  """The data mesh that config.parallel asks for (all devices when the config has no `parallel`)."""
  p = config.get("parallel", None)
  return data_mesh(p.num_devices if p is not None else 0)


def check_divisible(batch: int, mesh: Mesh, what: str) -> None:
  """Raises a ValueError naming `what` when `batch` does not split evenly over the mesh and hosts."""
  n, hosts = mesh.size, jax.process_count()
  if batch % n or batch % hosts:
    m = int(np.lcm(n, hosts))
    raise ValueError(
        f"{what}={batch} does not divide over the {n} devices of the data mesh ({hosts} host(s)); "
        f"use a multiple of {m} (e.g. {max(m, batch // m * m)} or {(batch // m + 1) * m}), or set "
        f"parallel.num_devices to a divisor of {batch}.")


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimizer state, keys)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Split along the first (batch) axis over the "data" mesh axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` placed replicated on the mesh (single host: a plain device_put).

  With several hosts `device_put` cannot target devices of other processes: each host builds the
  global array from its own copy (every host holds the same values: parameters from the same seed,
  keys from the same fold_in).
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _global_replicated(x, sharding), tree)


def _global_replicated(x: Any, sharding: NamedSharding) -> jax.Array:
  if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
    data = _global_replicated(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda ix: host[ix])


def local_rows(mesh: Mesh, global_batch: int) -> slice:
  """The rows of a global batch that this host's devices hold (all rows on a single host)."""
  index_map = batch_sharded(mesh).addressable_devices_indices_map((global_batch,))
  starts = [ix[0].indices(global_batch)[0] for ix in index_map.values()]
  stops = [ix[0].indices(global_batch)[1] for ix in index_map.values()]
  return slice(min(starts), max(stops))


def global_batch(mesh: Mesh, *local: np.ndarray) -> tuple[jax.Array, ...]:
  """This host's rows of a batch (see `local_rows`) → global batch-sharded arrays."""
  sharding = batch_sharded(mesh)
  return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in local)


def shard_rows(mesh: Mesh, *full: np.ndarray) -> tuple[jax.Array, ...]:
  """Whole batches that every host holds (e.g. the study's shared noises) → batch-sharded arrays."""
  sharding = batch_sharded(mesh)
  return tuple(jax.make_array_from_callback(a.shape, sharding, lambda ix, a=a: a[ix])
               for a in map(np.asarray, full))


def to_host(tree: Any) -> Any:
  """A (possibly multi-host) pytree of arrays as numpy arrays on every host."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
