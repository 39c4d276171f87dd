"""One data-parallel code path for 1 device, N devices and N hosts: a ('data',) mesh, and the
host-side views of sharded results (this process's rows, every process's arrays)."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def to_global(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy batch (leading dim = local batch) -> global jax.Arrays."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def local_rows(tree) -> dict:
    """Batch-sharded global arrays -> numpy arrays of the rows this process holds, in order
    (on one process: the whole array). Replicated arrays come back whole."""

    def rows(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        shards = [s for s in x.addressable_shards if s.replica_id == 0]
        shards.sort(key=lambda s: s.index[0].start or 0 if s.index else 0)
        return np.concatenate([np.asarray(s.data) for s in shards], axis=0)

    return jax.tree.map(rows, tree)


def allgather_ragged(tree: dict) -> list[dict]:
    """Every process's dict of numpy arrays -> the list of all processes' dicts (on every
    process). Leading dims may differ between processes (padded for the transfer, trimmed)."""
    if jax.process_count() == 1:
        return [tree]
    from jax.experimental import multihost_utils

    keys = sorted(tree)
    lengths = np.asarray([np.shape(tree[k])[0] if np.ndim(tree[k]) else 0 for k in keys])
    all_lengths = np.asarray(multihost_utils.process_allgather(lengths))  # [P, K]
    longest = all_lengths.max(axis=0)
    padded = {}
    for i, k in enumerate(keys):
        x = np.asarray(tree[k])
        if x.ndim:
            x = np.concatenate([x, np.zeros((longest[i] - len(x), *x.shape[1:]), x.dtype)])
        padded[k] = x
    gathered = multihost_utils.process_allgather(padded)  # leaves [P, ...]
    out = []
    for p in range(jax.process_count()):
        out.append(
            {
                k: np.asarray(gathered[k][p])[: all_lengths[p, i]]
                if np.ndim(tree[k])
                else np.asarray(gathered[k][p])
                for i, k in enumerate(keys)
            }
        )
    return out
