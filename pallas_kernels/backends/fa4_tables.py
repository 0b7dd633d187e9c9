"""FlashAttention-4's block-sparse tables from our analytic block tables (numpy only).

FA4 (``flash_attn.cute``) takes block sparsity as FlexAttention's ``BlockMask`` does: per query
block, a count and a list of *masked* KV blocks (the ``mask_mod`` runs there) and of *full* KV
blocks (no mask); the backward takes the transpose (per KV block, the query blocks). Both come
from ``pallas_kernels.block_tables`` at 128 x 128 (FA4's Hopper tile sizes divide it): our
*partial* tiles are FA4's masked blocks (diagonal, pattern edges and the ragged tail, where FA4
also masks out-of-range keys), the others its full blocks.

FA4 reads only the first ``count`` entries of each row, so the index arrays are compact
(``[rows, max count]``, at least 1 wide) rather than ``[rows, n_blocks]``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pallas_kernels.block_tables import block_tables

BLOCK = 128   # FA4's sparse block here: its Hopper tiles are 128 x 128 (fwd), 64 x 128 (bwd)


class SparseArrays(NamedTuple):
  """One direction's arrays, int32: ``mask_cnt [n]``, ``mask_idx [n, w1]``, ``full_cnt [n]``,
  ``full_idx [n, w2]`` (ascending block indices in each row)."""
  mask_cnt: np.ndarray
  mask_idx: np.ndarray
  full_cnt: np.ndarray
  full_idx: np.ndarray


def _split(indptr: np.ndarray, indices: np.ndarray, partial: np.ndarray) -> SparseArrays:
  n = indptr.size - 1
  rows = np.repeat(np.arange(n), np.diff(indptr))
  out = []
  for sel in (partial, ~partial):
    r, c = rows[sel], indices[sel]
    cnt = np.bincount(r, minlength=n).astype(np.int32)
    idx = np.zeros((n, max(int(cnt.max(initial=0)), 1)), np.int32)
    starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    idx[r, np.arange(r.size) - starts[r]] = c      # rows are sorted, so ranks are contiguous
    out += [cnt, idx]
  return SparseArrays(*out)


def sparse_arrays(spec, seq_len: int, block: int = BLOCK) -> tuple[SparseArrays, SparseArrays]:
  """``(forward, backward)`` arrays of ``spec`` for one causal row of ``seq_len`` tokens."""
  t = block_tables(spec, seq_len, seq_len, block_q=block, block_k=block)
  return (_split(t.fwd_indptr, t.fwd_indices, t.fwd_indices_partial),
          _split(t.bwd_indptr, t.bwd_indices, t.bwd_indices_partial))


def token_mask(spec, seq_len: int, arrays: SparseArrays, *, transposed: bool = False,
               block: int = BLOCK, allowed: np.ndarray | None = None) -> np.ndarray:
  """Bool ``[L, L]`` (query, key) mask that FA4 computes from ``arrays`` (full blocks whole,
  masked blocks through the mask_mod, keys past the end dropped): the tests' check that the
  tables lose and add nothing, and the emulated FA4's pairs. ``allowed``: the mask_mod as a bool
  ``[L, L]`` matrix (default ``spec.allowed``). O(L^2): small L only."""
  L = int(seq_len)
  if allowed is None:
    pos = np.arange(L)
    allowed = spec.allowed(pos[:, None], pos[None, :]) & np.ones((L, L), bool)
  m = np.zeros((L, L), bool)
  n = arrays.mask_cnt.size
  for row in range(n):
    for idx, cnt, full in ((arrays.mask_idx, arrays.mask_cnt, False),
                           (arrays.full_idx, arrays.full_cnt, True)):
      for col in idx[row, :cnt[row]]:
        qb, kb = (col, row) if transposed else (row, col)
        qs, ks = slice(qb * block, (qb + 1) * block), slice(kb * block, (kb + 1) * block)
        m[qs, ks] |= True if full else allowed[qs, ks]
  return m
