"""Data parallelism over devices and hosts: a Mesh over the batch axis, params replicated.

Sampling (`samplers.sample`) and distillation (`distill.fit`) shard the batch over every
device when there are several and they divide the batch (`default_mesh`); network params,
grids and keys are replicated. The computation is the same SPMD program as on one device:
with partitionable threefry (JAX's default) every random number depends only on the key and
its index, not on the device that draws it, so a sharded run gives the same integer samples
as the single-device run for the same key (tests/test_sharding.py checks this on 4 forced
CPU devices).

Several machines: call `initialize_distributed()` on every host before any other jax call
(the CLI: `--distributed`); `jax.devices()` then lists the devices of all hosts and the same
Mesh spans them. Every host runs the same program with the same key; outputs are global
arrays, of which `to_host` gathers a full copy on each host.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python ...   # 4 CPU devices, one host
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH = "batch"


def batch_mesh(devices=None) -> Mesh:
    """A 1-D Mesh named "batch" over `devices` (default: all devices of all hosts)."""
    devs = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devs.reshape(-1), (BATCH,))


def default_mesh(batch_size: int) -> Optional[Mesh]:
    """batch_mesh() when there are several devices and they divide batch_size, else None
    (one device, or a batch that cannot be split evenly: the run stays on one device).
    LSD_JAX_NO_SHARDING=1 turns sharding off."""
    n = jax.device_count()
    if n <= 1 or batch_size % n or os.environ.get("LSD_JAX_NO_SHARDING", "") not in ("", "0"):
        return None
    return batch_mesh()


def batch_sharding(mesh: Mesh, ndim: int = 1, axis: int = 0) -> NamedSharding:
    """NamedSharding splitting dimension `axis` over the mesh's batch axis."""
    spec = [None] * ndim
    spec[axis] = BATCH
    return NamedSharding(mesh, P(*spec))


def constrain_batch(a, mesh: Mesh, axis: int = 0):
    """Inside jit: pins the sharding of `a` (a pytree) to its batch dimension `axis`."""
    return jax.tree_util.tree_map(
        lambda v: jax.lax.with_sharding_constraint(v, batch_sharding(mesh, v.ndim, axis)), a)


def _put(a, sharding: NamedSharding):
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    host = np.asarray(a)  # the same value on every host (same key, same program)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_batch(a, mesh: Mesh, axis: int = 0):
    """Places arrays (a pytree) with dimension `axis` split over the mesh's batch axis."""
    return jax.tree_util.tree_map(lambda v: _put(v, batch_sharding(mesh, np.ndim(v), axis)), a)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every array leaf of `tree` on every device of the mesh (a no-op when it
    already is); non-array leaves pass through."""
    rep = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda v: _put(v, rep) if isinstance(v, (jax.Array, np.ndarray)) else v, tree)


def to_host(a) -> np.ndarray:
    """A full numpy copy of a (possibly multi-host) global array on this host."""
    if jax.process_count() > 1 and isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> dict:
    """Starts `jax.distributed` (multi-host) unless it is running already.

    With no arguments JAX detects the cluster (SLURM, Open MPI, Kubernetes/TPU pods) or
    reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. Call it on every host
    before any other jax call. Returns {process_id, process_count, devices, local_devices}.
    """
    if not _distributed_running():
        kw = {k: v for k, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                                ("process_id", process_id)) if v is not None}
        jax.distributed.initialize(**kw)
    return {"process_id": jax.process_index(), "process_count": jax.process_count(),
            "devices": jax.device_count(), "local_devices": jax.local_device_count()}


def _distributed_running() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:  # noqa: BLE001 - private API moved: assume not running
        return False


def describe(mesh: Optional[Mesh]) -> dict:
    """A JSON-able summary of the placement a run used."""
    if mesh is None:
        return {"sharded": False, "devices": 1}
    return {"sharded": True, "devices": int(mesh.devices.size), "processes": jax.process_count(),
            "platform": mesh.devices.flat[0].platform}
