"""Data parallelism over devices and hosts: a Mesh over the batch axis, params replicated.

Sampling (`samplers.sample`) and distillation (`distill.fit`) shard the batch over every
device when there are several and they divide the batch (`default_mesh`); network params,
grids and keys are replicated. The computation is the same SPMD program as on one device:
with partitionable threefry (JAX's default) every random number depends only on the key and
its index, not on the device that draws it, so a sharded run gives the same integer samples
as the single-device run for the same key (tests/test_sharding.py checks this on 4 forced
CPU devices).

Several machines: every host runs the same program with the same arguments and calls
`initialize_distributed()` before any other jax computation (the CLI: `--distributed`);
`jax.devices()` then lists the devices of all hosts and the same Mesh spans them. Outputs
are global arrays of which each host holds its part of the batch: `to_host` gathers a full
copy on each host (a collective: every host calls it). On CPU the cross-host collectives
are gloo's over TCP (jax's default; the hosts must reach each other by hostname).
tests/test_multihost.py runs 2 processes x 2 CPU devices on 127.0.0.1 and checks that each
gets exactly the one-device result. Two machines, A (10.0.0.1) and B:

    # A: process 0, also the coordinator              # B: the same with JAX_PROCESS_ID=1
    export JAX_COORDINATOR_ADDRESS=10.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0
    lsd-jax sample --distributed --nfe 16 --num-samples 1024
    lsd-jax distill --distributed --out /shared/run ...

`distill --out` must be one directory both hosts see (a shared file system): orbax writes
each host's part of a checkpoint there and process 0 commits it (on separate disks host 1
waits for process 0's files and fails after 600 s). Process 0 alone writes the other files.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python ...   # 4 CPU devices, one host
"""

from __future__ import annotations

import functools
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
    Callers that want one device pass mesh=None (samplers.sample, distill.fit, eval.run_sampler)."""
    n = jax.device_count()
    if n <= 1 or batch_size % n:
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


@functools.lru_cache(maxsize=None)
def _reshard_fn(sharding: NamedSharding):
    return jax.jit(lambda v: v, out_shardings=sharding)


def _put(a, sharding: NamedSharding):
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array):
        if a.sharding == sharding:
            return a
        if not a.is_fully_addressable:
            # a global array (the output of a sharded program, e.g. the teacher cache):
            # no host holds all of it, so reshard it on the devices (every host runs this)
            return _reshard_fn(sharding)(a)
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


def global_tree(tree: Any) -> Any:
    """Several processes: every host-local array leaf of `tree` (numpy, or a jax array on
    this host's devices only; the same value on every host) becomes a global array
    replicated over the devices of all hosts, as orbax needs to checkpoint it; global
    arrays pass through. One process: `tree` itself."""
    if jax.process_count() == 1:
        return tree
    rep = NamedSharding(batch_mesh(), P())

    def put(v):
        if isinstance(v, np.ndarray) or (isinstance(v, jax.Array) and v.is_fully_addressable):
            return _put(v, rep)
        return v

    return jax.tree_util.tree_map(put, tree)


def is_primary() -> bool:
    """Whether this process writes files that every host would write alike: always, except
    on hosts other than process 0 of a multi-host run (they may share the directory)."""
    return jax.process_index() == 0


def to_host(a) -> np.ndarray:
    """A full numpy copy of a (possibly multi-host) global array on this host.

    With several processes and an array split over them this is a collective (an
    all-gather): every process must call it on the same arrays in the same order."""
    if (jax.process_count() > 1 and isinstance(a, jax.Array) and not a.is_fully_addressable
            and not a.is_fully_replicated):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)  # local, or replicated: this host's copy


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> dict:
    """Starts `jax.distributed` (multi-host) unless it is running already.

    Arguments left None are read from JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (jax itself reads only the first); if still
    unset JAX detects the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU). Call it on
    every host before any other jax computation. On CPU the cross-process collectives
    are gloo's over TCP (jax's default, `jax_cpu_collectives_implementation`). Returns
    {process_id, process_count, devices, local_devices}.
    """
    if not _distributed_running():
        coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
        if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
            num_processes = int(os.environ["JAX_NUM_PROCESSES"])
        if process_id is None and os.environ.get("JAX_PROCESS_ID"):
            process_id = int(os.environ["JAX_PROCESS_ID"])
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
