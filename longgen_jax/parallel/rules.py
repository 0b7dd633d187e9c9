"""Logical-axis sharding rules for parameters, optimizer state and activations.

Every tensor dimension gets a LOGICAL name; ``RULES`` maps logical names to mesh axes. A mesh
axis is dropped from a dimension it does not divide (or that another dimension of the same
tensor already uses), so any model size runs on any mesh (that dimension is then replicated).

Parameters are recognised by their canonical name (``docs/architecture.md`` §4), which is the
last name on the path of every model parameter and of the matching optimizer moments
(``opt_state[..].mu['segments'][0]['layers'][1]['wq'].value``); an extra leading dimension is a
stacked (scanned) layer axis. Default placement (MaxText-like):

* ``embed`` (the model width of a weight) over ``fsdp`` and ``sequence``: ZeRO-3 over every
  axis that does not otherwise split the weight, so sequence-parallel replicas do not each hold
  a full copy;
* ``heads``/``kv_heads``/``mlp``/``vocab`` over ``tensor`` (Megatron split);
* norm scales, stacked-layer axes, head_dim, scalars (step counters): replicated.

Activations: ``batch`` over ``("data", "fsdp")``, ``length`` over ``sequence``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from longgen_jax.parallel import compat

_log = logging.getLogger(__name__)

RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", ("sequence",)),
    ("embed", ("fsdp", "sequence")),
    ("vocab", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("head_dim", ()),
    ("norm", ()),
    ("layers", ()),
    ("act_embed", ()),
    ("act_heads", ("tensor",)),
    ("act_vocab", ("tensor",)),
)

PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    "attn_norm": ("norm",),
    "mlp_norm": ("norm",),
    "wq": ("embed", "heads", "head_dim"),
    "wk": ("embed", "kv_heads", "head_dim"),
    "wv": ("embed", "kv_heads", "head_dim"),
    "wo": ("heads", "head_dim", "embed"),
    "w_gate": ("embed", "mlp"),
    "w_up": ("embed", "mlp"),
    "w_down": ("mlp", "embed"),
}

BATCH_AXES = ("batch", "length")


def _rules_dict(rules: Iterable[tuple[str, Any]]) -> dict[str, tuple[str, ...]]:
  out = {}
  for name, axes in rules:
    if axes is None:
      axes = ()
    elif isinstance(axes, str):
      axes = (axes,)
    out[name] = tuple(axes)
  return out


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh,
                    rules: Iterable[tuple[str, Any]] = RULES) -> P:
  """PartitionSpec for a tensor of ``shape`` whose dims have ``logical`` names.

  Mesh axes of size 1, axes absent from the mesh, axes already used by an earlier dimension and
  axes that would not divide the dimension are skipped.
  """
  if len(logical) != len(shape):
    raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
  table = _rules_dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical, shape):
    if name is not None and name not in table:
      raise ValueError(f"no sharding rule for logical axis {name!r}; known: {sorted(table)}")
    picked, prod = [], 1
    for ax in table.get(name, ()) if name else ():
      size = compat.axis_size(mesh, ax)
      if ax not in mesh.axis_names or size == 1 or ax in used or dim % (prod * size):
        continue
      picked.append(ax)
      prod *= size
    used.update(picked)
    spec.append(None if not picked else picked[0] if len(picked) == 1 else tuple(picked))
  return P(*spec)


def _path_names(path) -> list[str]:
  names = []
  for k in path:
    for attr in ("key", "name"):
      v = getattr(k, attr, None)
      if isinstance(v, str):
        names.append(v)
        break
  return names


def param_logical_axes(path, shape: Sequence[int]) -> tuple[str | None, ...] | None:
  """Logical axes of a parameter-like leaf from its path (None if not a known parameter)."""
  for name in reversed(_path_names(path)):
    if name in PARAM_AXES:
      axes = PARAM_AXES[name]
      extra = len(shape) - len(axes)
      if extra < 0:
        return None
      return ("layers",) * extra + axes
  return None


def tree_shardings(tree: Any, mesh, rules: Iterable[tuple[str, Any]] = RULES) -> Any:
  """``NamedSharding`` for every array leaf of a params / optimizer-state tree.

  Leaves whose path names a canonical parameter get the rule-based spec; everything else
  (step counters, schedule states, empty states) is replicated.
  """
  rules = tuple(rules)

  def one(path, leaf):
    shape = np.shape(leaf)
    axes = param_logical_axes(path, shape)
    if axes is None:
      if len(shape) > 1:
        _log.warning("no sharding rule for %s %s: replicated", jax.tree_util.keystr(path), shape)
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_spec(mesh, rules: Iterable[tuple[str, Any]] = RULES, *, shape=None) -> P:
  """Spec of a ``[B, T]`` data array: batch over (data, fsdp), length over sequence."""
  shape = shape or (_big(mesh), _big(mesh))
  return logical_to_spec(BATCH_AXES, shape, mesh, rules)


def _big(mesh) -> int:
  return int(np.prod(list(dict(mesh.shape).values()))) * 1024


def batch_shardings(batch: Mapping[str, Any], mesh, rules=RULES) -> dict[str, NamedSharding]:
  """``NamedSharding`` of each ``[B, T]`` batch entry (checks divisibility, one clear error)."""
  out = {}
  for k, x in batch.items():
    shape = np.shape(x)
    if len(shape) != 2:
      raise ValueError(f"batch[{k!r}] must be [B, T], got shape {shape}")
    want = batch_spec(mesh, rules)
    got = logical_to_spec(BATCH_AXES, shape, mesh, rules)
    if got != want:
      raise ValueError(f"batch[{k!r}] shape {shape} does not divide the mesh "
                       f"{dict(mesh.shape)}: batch must be a multiple of data*fsdp and length a "
                       "multiple of sequence")
    out[k] = NamedSharding(mesh, want)
  return out


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
