"""FlexAttention masks for our patterns, written as a FlexAttention user writes them, for the torch
side of ``benchmarks/attention.py``.

* ``mask_mod_for(spec)``: one ``mask_mod`` per pattern: causality and the pattern's own predicate
  (``spec.pattern.visible``: operators only, so it runs on torch tensors unchanged), with the
  spec's parameters as Python ints. ``torch.compile(flex_attention, dynamic=False)`` then
  compiles each pattern statically, and FlexAttention's FLASH (FlashAttention-4) backend accepts
  it (it refuses mask_mods that capture tensors or symbolic scalars). Any registered pattern works.
* ``block_mask_from_tables(spec, L, ...)``: the ``BlockMask`` built from our analytic block tables
  (``pallas_kernels.block_tables``) with ``BlockMask.from_kv_blocks``: partial blocks get the
  mask_mod, full blocks run unmasked — the same split ``create_block_mask`` computes, without
  evaluating the mask_mod on all L x L pairs (``create_block_mask(_compile=True)`` took ~220 s at
  128K on an H100 in our first run). ``tests/test_flex_block_mask.py`` checks both agree.
"""

from __future__ import annotations

import numpy as np

from pallas_kernels.block_tables import block_tables
from pallas_kernels.spec import AttentionSpec


def mask_mod_for(spec: AttentionSpec):
  """``mask_mod(b, h, q_idx, kv_idx)``: ``spec.allowed`` (causal included) for this pattern."""
  pattern = spec.pattern

  def mask_mod(b, h, q_idx, kv_idx):
    del b, h
    return (kv_idx <= q_idx) & pattern.visible(q_idx, kv_idx, spec)

  mask_mod.__name__ = f"mask_{spec.kind}"
  return mask_mod


def kv_block_arrays(spec: AttentionSpec, L: int, block: int = 128):
  """Numpy ``(kv_num, kv_idx, full_num, full_idx)`` ([n, ], [n, n_kv]) of FlexAttention's block
  mask: partial (masked) and full KV blocks per query block, ascending."""
  t = block_tables(spec, L, L, block_q=block, block_k=block)
  n, nk = t.n_q_blocks, t.n_kv_blocks
  rows = np.repeat(np.arange(n), np.diff(t.fwd_indptr))
  out = []
  for sel in (t.fwd_indices_partial, ~t.fwd_indices_partial):
    r, c = rows[sel], t.fwd_indices[sel]
    num = np.bincount(r, minlength=n).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(num)[:-1]])
    idx = np.zeros((n, nk), np.int32)
    idx[r, np.arange(r.size) - starts[r]] = c
    out += [num, idx]
  return tuple(out)


def block_mask_from_tables(spec: AttentionSpec, L: int, torch, device, mod, block: int = 128):
  """FlexAttention ``BlockMask`` (batch and heads broadcast) of ``spec`` at length ``L``."""
  from torch.nn.attention.flex_attention import BlockMask  # pylint: disable=g-import-not-at-top
  kv_num, kv_idx, full_num, full_idx = kv_block_arrays(spec, L, block)
  t = lambda a: torch.as_tensor(a, device=device)[None, None]  # noqa: E731
  return BlockMask.from_kv_blocks(t(kv_num), t(kv_idx), t(full_num), t(full_idx),
                                  BLOCK_SIZE=block, mask_mod=mod, seq_lengths=(L, L))
