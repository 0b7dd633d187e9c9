"""Device mesh from the config: axes ``data``, ``fsdp``, ``sequence``, ``tensor``.

``config.mesh`` (ml_collections, dict, or ``MeshConfig``) gives one size per axis; ``-1`` takes
all remaining devices (at most one axis may be -1). The device order is ``jax.make_mesh``'s
topology-aware order with ``tensor`` innermost (most traffic, fastest links), then ``sequence``
(ring neighbours), then ``fsdp`` and ``data``.

Sequence-parallel choices live next to the sizes because they only mean something with a
``sequence`` axis:

* ``sequence_attention``: ``"ring"`` (KV passed around with ``ppermute``) or ``"allgather"``
  (KV all-gathered once per full layer). Sparse layers always use the O(window) halo exchange.
* ``sequence_layout``: ``"zigzag"`` (default; causal load balance, works for every layer kind),
  ``"striped"`` (token t on shard t mod n; full layers only) or ``"contiguous"``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax

from longgen_jax.parallel import compat

AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")
SEQUENCE_ATTENTION = ("ring", "allgather")
SEQUENCE_LAYOUTS = ("zigzag", "striped", "contiguous")


class MeshError(ValueError):
  """An impossible mesh request (one clear line)."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the four mesh axes (-1: the rest) and the sequence-parallel options."""

  data: int = 1
  fsdp: int = -1
  sequence: int = 1
  tensor: int = 1
  sequence_attention: str = "ring"
  sequence_layout: str = "zigzag"

  def __post_init__(self):
    sizes = [getattr(self, a) for a in AXES]
    for a, s in zip(AXES, sizes):
      if not isinstance(s, int) or isinstance(s, bool) or (s < 1 and s != -1):
        raise MeshError(f"mesh.{a} must be a positive int or -1, got {s!r}")
    if sizes.count(-1) > 1:
      raise MeshError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
    if self.sequence_attention not in SEQUENCE_ATTENTION:
      raise MeshError(f"mesh.sequence_attention {self.sequence_attention!r} is not one of "
                      f"{SEQUENCE_ATTENTION}")
    if self.sequence_layout not in SEQUENCE_LAYOUTS:
      raise MeshError(f"mesh.sequence_layout {self.sequence_layout!r} is not one of "
                      f"{SEQUENCE_LAYOUTS}")

  @classmethod
  def from_any(cls, cfg: Any = None) -> "MeshConfig":
    """From None (all devices on fsdp), a MeshConfig, a mapping / ConfigDict, or a string.

    The string form is ``"data=2,fsdp=-1,sequence=4"`` (unnamed axes keep their defaults,
    except that ``fsdp`` becomes 1 when another axis is -1).
    """
    if cfg is None:
      return cls()
    if isinstance(cfg, cls):
      return cfg
    if isinstance(cfg, str):
      d = {}
      for part in filter(None, (p.strip() for p in cfg.split(","))):
        key, sep, val = part.partition("=")
        if not sep:
          raise MeshError(f"cannot parse mesh {cfg!r}: expected 'axis=size,...'")
        key = key.strip()
        d[key] = val.strip() if key.startswith("sequence_") else int(val)
      cfg = d
    if hasattr(cfg, "to_dict") and not isinstance(cfg, Mapping):
      cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
      raise MeshError(f"cannot build a mesh config from {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
      raise MeshError(f"unknown mesh field(s) {unknown}; known: {sorted(known)}")
    d = dict(cfg)
    if any(d.get(a) == -1 for a in AXES if a != "fsdp") and "fsdp" not in d:
      d["fsdp"] = 1
    return cls(**d)

  def resolve(self, n_devices: int) -> dict[str, int]:
    """Concrete axis sizes for ``n_devices`` (fills the -1 axis; checks the product)."""
    sizes = {a: getattr(self, a) for a in AXES}
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
      if n_devices % fixed:
        raise MeshError(f"{n_devices} devices cannot be split as {self._fmt(sizes)}: the fixed "
                        f"axes multiply to {fixed}, which does not divide {n_devices}")
      free = next(a for a, s in sizes.items() if s == -1)
      sizes[free] = n_devices // fixed
    elif fixed != n_devices:
      raise MeshError(f"mesh {self._fmt(sizes)} has {fixed} devices but {n_devices} are "
                      "available; set one axis to -1 or make the product match")
    return sizes

  @staticmethod
  def _fmt(sizes: Mapping[str, int]) -> str:
    return ",".join(f"{a}={s}" for a, s in sizes.items())


def make_mesh(cfg: Any = None, *, devices=None) -> jax.sharding.Mesh:
  """Builds the 4-axis mesh (every axis present, size-1 axes included).

  Works the same for one device (all axes 1) and for many hosts (``jax.devices()`` is global
  after ``jax.distributed.initialize``).
  """
  mc = MeshConfig.from_any(cfg)
  devices = list(jax.devices() if devices is None else devices)
  sizes = mc.resolve(len(devices))
  return compat.make_mesh([sizes[a] for a in AXES], AXES, devices=devices)


def mesh_sizes(mesh) -> dict[str, int]:
  """``{axis: size}`` for the four standard axes (1 where the mesh lacks one)."""
  return {a: compat.axis_size(mesh, a) for a in AXES}
