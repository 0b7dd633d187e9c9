"""KV-cache size per layer type: measured (the allocated buffers) and analytic (``kv_budget``)."""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

from pallas_kernels.spec import AttentionSpec

from longgen_jax.infer.cache import HybridCache, bytes_per_token


def nbytes(x) -> int:
  """Bytes of an array or a ``jax.ShapeDtypeStruct`` (abstract caches are reported too)."""
  return int(math.prod(x.shape) * np.dtype(x.dtype).itemsize)


def _mib(n: float) -> str:
  return f"{n / 2**20:,.2f} MiB"


def kv_table(cache: HybridCache) -> list[dict]:
  """One row per distinct served spec: layers, slots per row, K/V bytes, position bytes."""
  rows: dict[str, dict] = collections.OrderedDict()
  for lc in cache.layers:
    key = f"{lc.kind} {lc.spec}"
    r = rows.setdefault(key, {"kind": lc.kind, "spec": str(lc.spec), "layers": 0,
                              "slots_per_row": lc.n_slots, "kv_bytes": 0, "pos_bytes": 0})
    r["layers"] += 1
    r["kv_bytes"] += nbytes(lc.k) + nbytes(lc.v)
    r["pos_bytes"] += 0 if lc.pos is None else nbytes(lc.pos)
  return list(rows.values())


def full_equivalent_bytes(specs: Sequence[AttentionSpec], cache: HybridCache) -> int:
  """K/V bytes the same rows would need if every layer kept every position (no sparsity)."""
  lc = cache.layers[0]
  per_tok = bytes_per_token(lc.k.shape[1], lc.k.shape[3], lc.k.dtype)
  return per_tok * int(cache.lengths.shape[0]) * cache.capacity * len(specs)


def format_kv_report(cache: HybridCache) -> str:
  """A few lines: per layer type, total, and the saving against an all-full cache."""
  rows = kv_table(cache)
  lc = cache.layers[0]
  lines = [f"KV cache: batch {cache.lengths.shape[0]}, capacity {cache.capacity} positions/row, "
           f"{lc.k.dtype}, {lc.k.shape[1]} KV heads x {lc.k.shape[3]}"]
  total = 0
  for r in rows:
    total += r["kv_bytes"] + r["pos_bytes"]
    extra = f" (+{_mib(r['pos_bytes'])} positions)" if r["pos_bytes"] else ""
    lines.append(f"  {r['spec']:<26} {r['layers']:>3} layer(s) x {r['slots_per_row']:>9,} slots"
                 f"/row = {_mib(r['kv_bytes'])}{extra}")
  full = full_equivalent_bytes([lc.spec for lc in cache.layers], cache)
  lines.append(f"  total {_mib(total)}; all-full attention would need {_mib(full)} "
               f"({1 - total / full:.1%} saved)")
  return "\n".join(lines)
