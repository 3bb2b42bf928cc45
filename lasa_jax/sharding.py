"""Device mesh and the one logical-axis rules table.

Every parameter and activation names its axes logically (`("layers", "embed", "mlp")`); `LOGICAL_AXIS_RULES` maps
each logical name to mesh axes of a `("data", "fsdp", "tensor")` mesh. A mesh axis is only used for an array
dimension it divides; otherwise that dimension is replicated (and `check_replicated` reports large parameters that
ended up fully replicated).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lasa_jax.infra.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None = replicated). One table for parameters and activations.
LOGICAL_AXIS_RULES: dict[str, tuple[str, ...] | None] = {
    # parameters
    "layers": None,            # stacked blocks: never sharded (scan slices it)
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "norm": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
}

log = logging.getLogger(__name__)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh with Auto axis types. One size may be -1: it takes the remaining devices.

    Auto axes let XLA propagate shardings from the parameter and activation constraints (jax 0.10 defaults to
    Explicit axes, under which the decoder's einsums would need explicit output shardings).
    """
    devices = list(devices) if devices is not None else jax.devices()
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise InputError(f"at most one mesh size may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known <= 0 or len(devices) % known:
            raise InputError(f"mesh data={data} fsdp={fsdp} tensor={tensor}: {len(devices)} devices are not "
                             f"divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if any(s < 1 for s in sizes) or math.prod(sizes) != len(devices):
        raise InputError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs {math.prod(sizes)} "
                         f"devices, have {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None,
                    rules: Mapping[str, tuple[str, ...] | None] = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions have logical `names`.

    With `shape` and `mesh`, mesh axes that do not divide a dimension (or are already used by an earlier
    dimension) are dropped for that dimension.
    """
    spec, used = [], set()
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no entry in LOGICAL_AXIS_RULES")
        axes = [a for a in (rules[name] or ()) if a not in used]
        if mesh is not None:
            axes = [a for a in axes if mesh.shape[a] > 1]
            if shape is not None:
                kept, size = [], 1
                for a in axes:
                    if shape[i] % (size * mesh.shape[a]) == 0:
                        kept.append(a)
                        size *= mesh.shape[a]
                axes = kept
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def constrain(x: jax.Array, mesh: Mesh | None, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; identity without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, names, x.shape))


def batch_shards(mesh: Mesh | None) -> int:
    """How many ways the `batch` rule splits a batch dimension (1 without a mesh): a global batch must be a
    multiple of this to be sharded evenly."""
    if mesh is None:
        return 1
    return math.prod(mesh.shape[axis] for axis in (LOGICAL_AXIS_RULES["batch"] or ()))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Sharding of an input array whose first dimension is the batch (split over data and fsdp)."""
    return named_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1), shape)


def put_batch(mesh: Mesh | None, *arrays: np.ndarray) -> tuple:
    """Place host arrays on the mesh with the batch dimension sharded (single device without a mesh).

    On a multi-process run every process passes the same global host arrays; each keeps only its shards.
    """
    if mesh is None:
        return tuple(jax.numpy.asarray(a) for a in arrays)
    out = []
    for a in arrays:
        a = np.asarray(a)
        sharding = batch_sharding(mesh, a.shape)
        out.append(jax.make_array_from_callback(a.shape, sharding, lambda idx, a=a: a[idx]))
    return tuple(out)


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly sharded, possibly multi-process) array as host numpy.

    On a multi-process run every process must call this (it gathers collectively)."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def check_replicated(named_shapes: Iterable[tuple[str, Sequence[int], PartitionSpec, int]],
                     threshold_bytes: int = 64 * 2**20) -> list[str]:
    """Warn about parameters of at least `threshold_bytes` whose PartitionSpec shards nothing.

    `named_shapes` yields (name, shape, spec, itemsize). Returns the names it warned about.
    """
    flagged = []
    for name, shape, spec, itemsize in named_shapes:
        nbytes = int(np.prod(shape)) * itemsize
        if nbytes >= threshold_bytes and all(s is None for s in spec):
            flagged.append(name)
            log.warning("parameter %s %s (%.1f MiB) is fully replicated on the mesh: no mesh axis divides its "
                        "dimensions under LOGICAL_AXIS_RULES", name, tuple(shape), nbytes / 2**20)
    return flagged
