"""Kernel-ready block lists for the Pallas GPU (Triton) kernels.

The kernels in ``pallas_gpu.py`` walk, for each query block (forward, dQ) or each KV block (dK/dV),
a list of the blocks it must visit. This module turns the analytic block tables of
``pallas_kernels.block_tables`` (docs/architecture.md §3) into one int32 matrix per direction:

  rows[i] = [n_full, n_total, blk_0, blk_1, ..., blk_{max-1}]

with the ``n_full`` entries that need no token mask first and the partial ones (diagonal, window or
sink edge, ragged tail) after them, so a kernel runs two loops: an unmasked one over
``[0, n_full)`` and a masked one over ``[n_full, n_total)``. Padding repeats the last valid entry.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from pallas_kernels.block_tables import block_tables
from pallas_kernels.spec import AttentionSpec


@dataclasses.dataclass(frozen=True)
class KernelTables:
  """Ordered visit lists for one (spec, lengths, offsets, block sizes) combination.

  Attributes:
    block_q, block_k: tile sizes the lists refer to.
    n_q_blocks, n_kv_blocks: ceil(q_len / block_q), ceil(kv_len / block_k).
    fwd: int32 [n_q_blocks, 2 + max_fwd]: per query block, full-first KV block list.
    bwd: int32 [n_kv_blocks, 2 + max_bwd]: per KV block, full-first query block list.
    visited: number of (query block, KV block) tiles visited (for cost accounting).
  """

  block_q: int
  block_k: int
  n_q_blocks: int
  n_kv_blocks: int
  fwd: np.ndarray
  bwd: np.ndarray
  visited: int


def _ordered_rows(idx: np.ndarray, cnt: np.ndarray, partial: np.ndarray,
                  force_partial: np.ndarray) -> np.ndarray:
  """Reorders each row's valid entries as [full..., partial...] and prepends [n_full, n_total].

  ``force_partial`` (bool, same shape as idx) marks entries that must be masked whatever the
  table says (the ragged KV tail, whose padded keys only the token mask removes).
  """
  n, width = idx.shape
  if width == 0:
    idx = np.zeros((n, 1), np.int32)
    partial = force_partial = np.zeros((n, 1), bool)
    width = 1
  valid = np.arange(width)[None, :] < cnt[:, None]
  part = (partial | force_partial) & valid
  full = ~part & valid
  # Stable sort key: full entries (0) before partial (1) before padding (2); ascending inside.
  key = np.where(full, 0, np.where(part, 1, 2))
  order = np.argsort(key, axis=1, kind="stable")
  out_idx = np.take_along_axis(idx, order, axis=1)
  # Repeat the last valid entry into the padding (keeps every index in bounds).
  last = np.take_along_axis(out_idx, np.maximum(cnt - 1, 0)[:, None], axis=1)
  out_idx = np.where(np.arange(width)[None, :] >= cnt[:, None], last, out_idx)
  head = np.stack([full.sum(axis=1), cnt], axis=1)
  return np.concatenate([head, out_idx], axis=1).astype(np.int32)


@functools.lru_cache(maxsize=256)
def kernel_tables(spec: AttentionSpec, q_len: int, kv_len: int, block_q: int, block_k: int,
                  q_offset: int = 0, kv_offset: int = 0) -> KernelTables:
  """Builds (and caches) the ordered forward and backward visit lists."""
  bt = block_tables(spec, q_len, kv_len, block_q=block_q, block_k=block_k, q_offset=q_offset,
                    kv_offset=kv_offset)
  fwd_idx = np.asarray(bt.fwd_idx, np.int32)
  bwd_idx = np.asarray(bt.bwd_idx, np.int32)
  n_q, n_k = int(bt.n_q_blocks), int(bt.n_kv_blocks)
  ragged_k = kv_len % block_k != 0
  fwd_force = (fwd_idx == n_k - 1) & ragged_k
  bwd_force = np.zeros(bwd_idx.shape, bool)
  if ragged_k and n_k:
    bwd_force[n_k - 1] = True
  fwd = _ordered_rows(fwd_idx, np.asarray(bt.fwd_cnt, np.int32), np.asarray(bt.fwd_partial, bool),
                      fwd_force)
  bwd = _ordered_rows(bwd_idx, np.asarray(bt.bwd_cnt, np.int32), np.asarray(bt.bwd_partial, bool),
                      bwd_force)
  return KernelTables(block_q=block_q, block_k=block_k, n_q_blocks=n_q, n_kv_blocks=n_k, fwd=fwd,
                      bwd=bwd, visited=int(np.sum(bt.fwd_cnt)))
