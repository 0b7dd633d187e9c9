"""Small helpers shared by the block-table builder and the blocked kernels."""

from __future__ import annotations

import numpy as np

NEG_INF = float("-inf")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def is_pow2(x: int) -> bool:
  return isinstance(x, (int, np.integer)) and x >= 1 and (x & (x - 1)) == 0


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def next_pow2(x: int) -> int:
  return 1 << max(0, int(x) - 1).bit_length()


def default_tile(spec_block: int, length: int, minimum: int = 8) -> int:
  """Tile for a sequence of ``length``: the spec block, shrunk (power of two) for short ones."""
  return max(minimum, min(spec_block, next_pow2(length)))


def expand_ranges(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
  """Concatenates the half-open integer ranges ``[start[e], stop[e])`` (int32; empty ones skipped).

  Vectorised; cost proportional to the number of produced values (which must fit int32).
  """
  n = np.maximum(stop - start, 0)
  keep = n > 0
  start, n = start[keep], n[keep].astype(np.int64)
  total = int(n.sum())
  if total == 0:
    return np.zeros(0, np.int32)
  first = np.cumsum(n) - n                       # output index of each range's first value
  vals = np.arange(total, dtype=np.int32 if total < 2**31 else np.int64)
  vals += np.repeat((start - first).astype(vals.dtype), n)
  return vals.astype(np.int32, copy=False)
