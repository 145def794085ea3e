"""Device meshes and the one table that maps logical axis names to mesh axes.

Every weight and activation is described by *logical* axes ("embed", "q_heads", "batch", ...).
`LOGICAL_AXIS_RULES` says which mesh axis (`data`, `fsdp`, `tensor`) each one is split over; changing
the parallelism strategy means changing that table, nothing else.

The mesh axes are created with `AxisType.Auto` on purpose: recent JAX makes `jax.make_mesh` axes
Explicit by default, which turns every sharding mismatch into a type error at trace time. We place
parameters and inputs explicitly and constrain activations at layer boundaries, and let XLA propagate
the rest, which keeps one model code path for one device, a pod slice, and the tests' fake CPU mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LogicalAxes = tuple[str | None, ...]

# logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "seq": None,
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    # activations keep the model width whole: their batch axis already spans data and fsdp.
    "act_embed": None,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over the three named axes; -1 on one axis takes the remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"mesh {sizes}: at most one axis may be -1")
        known = math.prod(s for s in sizes if s != -1)
        if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
            raise ValueError(
                f"mesh data={self.data} fsdp={self.fsdp} tensor={self.tensor} does not fit "
                f"{num_devices} devices: the product of the axis sizes must divide the device count")
        sizes = [num_devices // known if s == -1 else s for s in sizes]
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but "
                f"{num_devices} are present; set one axis to -1 to absorb the rest")
        return tuple(sizes)


def make_mesh(config: MeshConfig | Sequence[int] = MeshConfig(), devices=None) -> Mesh:
    """A `Mesh` over ("data", "fsdp", "tensor") with Auto axis types."""
    devices = jax.devices() if devices is None else list(devices)
    shape = config.shape(len(devices)) if isinstance(config, MeshConfig) else tuple(config)
    if len(shape) != len(MESH_AXES) or math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {shape} does not match {len(devices)} devices over {MESH_AXES}")
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_spec(logical_axes: LogicalAxes, shape: Sequence[int], mesh_shape: dict[str, int],
                    rules: dict = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """The `PartitionSpec` for an array with these logical axes on a mesh of `mesh_shape`.

    A dimension that the mapped mesh axes do not divide evenly is replicated instead (SmolLM2's 3 KV
    heads on a tensor axis of 2, say): correct everywhere, and only the odd tensor pays for it.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {logical_axes} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        mesh_axes = rules.get(name) if name is not None else None
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        mesh_axes = tuple(a for a in mesh_axes if mesh_shape.get(a, 1) > 1)
        if not mesh_axes or size % math.prod(mesh_shape[a] for a in mesh_axes):
            spec.append(None)
            continue
        if used & set(mesh_axes):
            raise ValueError(f"logical axes {logical_axes} map mesh axes {sorted(used & set(mesh_axes))} twice")
        used |= set(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: LogicalAxes, shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, dict(mesh.shape)))


def constrain(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
    """Pins an activation's sharding when traced under `jax.set_mesh(mesh)`; a no-op otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, x.shape, dict(zip(mesh.axis_names, mesh.axis_sizes)))
    return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Sharding for an input whose leading axis is the batch (tokens, masks, rewards)."""
    return named_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1), shape)
