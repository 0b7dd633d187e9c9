"""Kernel-ready block lists for the Pallas GPU (Triton) kernels.

The kernels in ``pallas_gpu.py`` walk, for each query block (forward, dQ) or each KV block (dK/dV),
a list of the blocks it must visit. This module turns the analytic block tables of
``pallas_kernels.block_tables`` (docs/architecture.md §3) into one int32 matrix per direction:

  rows[i] = [n_full, n_total, blk_0, blk_1, ..., blk_{max-1}]

with the ``n_full`` entries that need no token mask first and the partial ones (diagonal, window or
sink edge, ragged tail) after them, so a kernel runs two loops: an unmasked one over
``[0, n_full)`` and a masked one over ``[n_full, n_total)``. Padding repeats the last valid entry.

Packed rows (segment ids): ``segment_visits`` filters such a matrix per batch row on the device,
dropping the tiles whose query and key blocks share no segment id and masking the ones that
straddle a document boundary (the Mosaic GPU kernels take it).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
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


def visit_table(rows, row_seg, entry_seg, row_block: int, entry_block: int):
  """The visit lists a kernel reads: ``rows`` (static, ``[R, 2 + W]``) without segment ids
  (``row_seg`` None), ``segment_visits`` (``[B, R, 2 + W]``) with them."""
  if row_seg is None:
    return jnp.asarray(rows)
  return segment_visits(rows, row_seg, entry_seg, row_block, entry_block)


def segment_visits(rows, row_seg, entry_seg, row_block: int, entry_block: int):
  """Per-batch visit lists for packed rows: int32 ``[B, R, 2 + W]``, each row laid out as
  ``rows[i]`` (``[n_full, n_total, blk...]``, full entries first, ascending inside each part).

  ``rows``: a ``KernelTables`` ``fwd`` or ``bwd`` matrix ``[R, 2 + W]`` whose row ``i`` covers
  tokens ``[i * row_block, (i + 1) * row_block)`` and whose entry ``j`` covers
  ``[j * entry_block, (j + 1) * entry_block)``. ``row_seg`` / ``entry_seg``: the segment ids of
  those tokens, ``[B, >= R * row_block]`` and ``[B, >= N * entry_block]`` (any integers; longer
  ids, e.g. padded to a larger tile, are cut to whole blocks). A tile whose
  two blocks' segment-id ranges do not overlap shares no id, so it is dropped; one stays full
  (unmasked) only if it was full and both blocks carry one and the same id; every other kept
  tile is partial, and the kernel masks it by pattern and segment id. Exact for any ids; for
  packed (contiguous) documents it visits only the tiles that hold same-document pairs, plus the
  ones straddling a boundary. Runs in XLA (traced), once per call.
  """
  rows = jnp.asarray(rows)
  width = rows.shape[1] - 2
  batch = row_seg.shape[0]
  row_seg = row_seg[:, :rows.shape[0] * row_block]
  entry_seg = entry_seg[:, :entry_seg.shape[1] // entry_block * entry_block]

  def ranges(seg, block):
    seg = seg.reshape(batch, -1, block)
    return seg.min(axis=-1), seg.max(axis=-1)

  r_lo, r_hi = ranges(row_seg, row_block)        # [B, R]
  e_lo, e_hi = ranges(entry_seg, entry_block)    # [B, N]
  idx = rows[:, 2:]
  pos = jnp.arange(width)[None, :]
  lo, hi = e_lo[:, idx], e_hi[:, idx]            # [B, R, W]
  r_lo, r_hi = r_lo[:, :, None], r_hi[:, :, None]
  keep = (pos < rows[:, 1:2]) & (lo <= r_hi) & (r_lo <= hi)
  full = keep & (pos < rows[:, 0:1]) & (lo == hi) & (r_lo == r_hi) & (lo == r_lo)
  key = jnp.where(full, 0, jnp.where(keep, 1, 2))
  order = jnp.argsort(key, axis=-1, stable=True)
  blocks = jnp.take_along_axis(jnp.broadcast_to(idx, key.shape), order, axis=-1)
  head = jnp.stack([full.sum(axis=-1), keep.sum(axis=-1)], axis=-1)
  return jnp.concatenate([head, blocks], axis=-1).astype(jnp.int32)
