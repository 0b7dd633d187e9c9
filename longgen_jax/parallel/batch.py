"""Per-process data sharding and host batch -> global ``jax.Array``.

Each process loads only the rows its devices hold. Processes whose devices hold the SAME rows
(a ``sequence`` or ``tensor`` axis spanning processes) must load the same rows, so the data
pipeline is sharded over "row groups", not over processes:

    info = data_shard_info(mesh, global_batch)
    it = build_train_iterator(..., batch_size=info.rows, process_index=info.index,
                              process_count=info.count)
    batch = make_global_batch(next(it), mesh, layout=layout)   # reorders, then shards

``make_global_batch`` applies the sequence layout (zigzag / striped) on the host, once, and
builds each ``[B, T]`` entry with ``jax.make_array_from_callback`` from this process's rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

from longgen_jax.parallel import rules
from longgen_jax.parallel.reorder import SeqLayout, reorder_batch


@dataclasses.dataclass(frozen=True)
class DataShard:
  """This process's share of the global batch."""

  index: int        # row-group index (pass as the data pipeline's process_index)
  count: int        # number of row groups (pass as process_count)
  row_start: int    # first global row this process loads
  rows: int         # rows this process loads (global_batch // count)


def _row_ranges(mesh, global_batch: int) -> dict[int, tuple[int, int]]:
  """``{process: (first_row, end_row)}`` of the rows that process's devices hold."""
  n_seq = max(1, dict(mesh.shape).get("sequence", 1))
  spec = rules.batch_spec(mesh)
  sharding = NamedSharding(mesh, spec)
  idx = sharding.devices_indices_map((global_batch, n_seq))
  ranges: dict[int, tuple[int, int]] = {}
  for dev, index in idx.items():
    rows = index[0]
    lo = rows.start or 0
    hi = global_batch if rows.stop is None else rows.stop
    p = dev.process_index
    old = ranges.get(p)
    ranges[p] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
  return ranges


def row_groups(mesh) -> int:
  """Number of distinct row blocks over processes (the data pipeline's process_count)."""
  b = 1
  for a in ("data", "fsdp"):
    b *= dict(mesh.shape).get(a, 1)
  return len(set(_row_ranges(mesh, b).values()))


def data_shard_info(mesh, global_batch: int, process_index: int | None = None) -> DataShard:
  """Which rows ``process_index`` (default: this process) must load."""
  p = jax.process_index() if process_index is None else process_index
  ranges = _row_ranges(mesh, global_batch)
  groups = sorted(set(ranges.values()))
  sizes = {hi - lo for lo, hi in groups}
  if len(sizes) != 1 or sum(hi - lo for lo, hi in groups) != global_batch:
    raise ValueError(f"process row ranges {ranges} do not tile the batch of {global_batch}; "
                     "order the mesh so that each process holds whole row blocks")
  lo, hi = ranges[p]
  return DataShard(groups.index((lo, hi)), len(groups), lo, hi - lo)


def make_global_batch(host_batch: Mapping[str, Any], mesh, *, layout: SeqLayout | None = None,
                      global_batch: int | None = None) -> dict[str, jax.Array]:
  """This process's rows (numpy ``[rows, T]``) -> global ``[B, T]`` arrays on ``mesh``.

  ``layout`` (sequence parallelism) reorders every ``[B, T]`` entry along T first.
  ``global_batch`` defaults to ``rows * number of row groups``.
  """
  host = {k: np.asarray(v) for k, v in host_batch.items()}
  if layout is not None:
    host = reorder_batch(host, layout, keys=tuple(host))
  rows = next(iter(host.values())).shape[0]
  if global_batch is None:
    global_batch = rows * row_groups(mesh)
  info = data_shard_info(mesh, global_batch)
  if info.rows != rows:
    raise ValueError(f"this process holds {rows} rows but its devices need {info.rows} of the "
                     f"global batch {global_batch}")
  out = {}
  for k, x in host.items():
    shape = (global_batch,) + x.shape[1:]
    sharding = NamedSharding(mesh, rules.logical_to_spec(rules.BATCH_AXES, shape, mesh))

    def cb(index, x=x):
      r = index[0]
      lo = (r.start or 0) - info.row_start
      hi = (global_batch if r.stop is None else r.stop) - info.row_start
      return x[(slice(lo, hi),) + tuple(index[1:])]

    out[k] = jax.make_array_from_callback(shape, sharding, cb)
  return out
