"""Version shims: the same code runs on jax 0.10.x (CPU dev box) and 0.11.x (GPU image).

Only APIs present in both are used directly; the few that moved are wrapped here:

* ``shard_map``: ``jax.shard_map`` (keyword ``check_vma``) when present, else the deprecated
  ``jax.experimental.shard_map.shard_map`` (keyword ``check_rep``).
* ``make_mesh``: ``jax.make_mesh`` with every axis ``AxisType.Auto`` (the GSPMD/Shardy
  propagation mode that ``NamedSharding`` + ``jit(out_shardings=...)`` expect). From jax 0.8 the
  default became ``Explicit``, which changes typing rules; we pin ``Auto`` explicitly.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax


def shard_map(f: Callable, *, mesh, in_specs, out_specs, check_vma: bool = True) -> Callable:
  """``jax.shard_map`` over every axis of ``mesh`` (fully manual)."""
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=check_vma)
  from jax.experimental.shard_map import shard_map as _legacy  # pragma: no cover (jax < 0.7)
  return _legacy(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma)


def auto_axis_types(n: int) -> tuple[Any, ...] | None:
  """``(AxisType.Auto,) * n`` where the enum exists, else None (older jax: Auto is implied)."""
  axis_type = getattr(jax.sharding, "AxisType", None)
  if axis_type is None:  # pragma: no cover
    return None
  return (axis_type.Auto,) * n


def make_mesh(shape: Sequence[int], names: Sequence[str], *, devices=None) -> jax.sharding.Mesh:
  """A mesh with topology-aware device order (``jax.make_mesh``) and Auto axis types."""
  shape, names = tuple(int(s) for s in shape), tuple(names)
  types = auto_axis_types(len(names))
  kwargs = {} if devices is None else {"devices": list(devices)}
  if types is not None:
    return jax.make_mesh(shape, names, axis_types=types, **kwargs)
  return jax.make_mesh(shape, names, **kwargs)  # pragma: no cover


def axis_size(mesh, name: str) -> int:
  """Size of a mesh axis, 1 when the mesh lacks the axis."""
  return int(dict(mesh.shape).get(name, 1))
