"""FlexAttention masks for our patterns, for the torch side of ``benchmarks/attention.py``.

* ``mask_mod(spec, torch, device)``: one token-level ``mask_mod`` for every pattern, parametrised by
  a captured int tensor (so switching patterns does not recompile the flex kernel); returns
  ``(mask_mod, set_spec)`` where ``set_spec(spec)`` loads a pattern's parameters.
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

_KINDS = {"full": 0, "sink_window": 1, "strided": 2}


def mask_mod(torch, device):
  """``(mask_mod, set_spec)``: token mask ``spec.allowed`` (causal included) for any pattern."""
  params = torch.zeros(6, dtype=torch.int32, device=device)

  def mod(b, h, qi, ki):
    del b, h
    causal = qi >= ki
    sw = (ki < params[1]) | (qi - ki < params[2])
    qb, kb = qi // params[3], ki // params[3]
    st = ((qb - kb) < params[4]) | ((kb % params[5]) == 0)
    return causal & ((params[0] == 0) | ((params[0] == 1) & sw) | ((params[0] == 2) & st))

  def set_spec(spec: AttentionSpec):
    if spec.kind not in _KINDS:
      raise ValueError(f"flex mask_mod has no {spec.kind!r} pattern (kinds: {tuple(_KINDS)})")
    params.copy_(torch.tensor(
        [_KINDS[spec.kind], spec.sink, max(spec.window, 1), spec.block, max(spec.local_blocks, 1),
         max(spec.vert_stride, 1)], dtype=torch.int32, device=device))

  return mod, set_spec


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
