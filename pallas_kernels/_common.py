"""Small helpers shared by the block-table builder and the blocked kernels."""

from __future__ import annotations

import numpy as np
from jax.ad_checkpoint import checkpoint_name

NEG_INF = float("-inf")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")

# Checkpoint names of the attention residuals (the kernel forward's output and lse, what every
# backend's custom_vjp backward reads). Every backend's forward rule tags them with
# ``tag_residuals`` so a remat policy that saves these names (``longgen_jax.model.remat``:
# ``save_attention``...) leaves the kernel forward dead in the backward's recomputation.
ATTN_OUT = "attn_out"
ATTN_LSE = "attn_lse"


def tag_residuals(out, lse):
  """``(out, lse)`` tagged ``ATTN_OUT`` / ``ATTN_LSE``.

  Call it in a custom_vjp forward rule on the kernel's raw outputs and derive BOTH the primal
  outputs and the residuals from the tagged values: if anything still read the untagged
  arrays, the recomputation would have to run the kernel again.
  """
  return checkpoint_name(out, ATTN_OUT), checkpoint_name(lse, ATTN_LSE)


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
