"""Attention against one layer's cache, for prefill chunks and for decode steps.

Both read the cache through ``pallas_kernels.decode`` (explicit slot positions, so ring buffers,
compact strided blocks and pages all look the same to the kernel):

* ``chunk_from_cache``: the part of a prefill chunk's attention that reads what earlier chunks
  cached (positions ``< start``). The chunk's attention to itself goes through
  ``pallas_kernels.attention`` (``forward.py``) and the two parts are merged by log-sum-exp.
* ``decode_from_cache``: a decode step, after the new token was written. Full layers read only the
  first ``kv_bucket`` slots (a static bucket >= every row's length), sparse layers their whole
  (small) buffer.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels import decode as decode_lib

from longgen_jax.infer.cache import LayerCache


def _iota_pos(batch: int, n: int, limit=None):
  """[B, n] slot positions of a full cache (slot = position), -1 at and after ``limit``."""
  pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], (batch, n))
  if limit is not None:
    pos = jnp.where(pos < limit, pos, -1)
  return pos


def chunk_from_cache(lc: LayerCache, q, q_pos, start, *, page_table=None, scale: float,
                     block_k: int):
  """``(out [B, T, Hq, D], lse [B, Hq, T])`` of chunk queries over cached positions ``< start``."""
  B = q.shape[0]
  if lc.kind == "full":
    pos = _iota_pos(B, lc.k.shape[2], start)
    return decode_lib.chunk_attention(q, lc.k, lc.v, lc.spec, q_pos=q_pos, kv_pos=pos,
                                      kv_limit=start, block_k=block_k, scale=scale,
                                      return_lse=True)
  if lc.kind == "paged":
    pos = _iota_pos(B, page_table.shape[1] * lc.k.shape[2], start)
    return decode_lib.chunk_attention(q, lc.k, lc.v, lc.spec, q_pos=q_pos, kv_pos=pos,
                                      kv_limit=start, page_table=page_table, block_k=block_k,
                                      scale=scale, return_lse=True)
  return decode_lib.chunk_attention(q, lc.k, lc.v, lc.spec, q_pos=q_pos, kv_pos=lc.pos,
                                    block_k=block_k, scale=scale, return_lse=True)


def decode_from_cache(lc: LayerCache, q, q_pos, *, kv_bucket: int, page_table=None,
                      scale: float, impl: str = "auto"):
  """``out [B, 1, Hq, D]`` of a decode step (the new token is already in the cache)."""
  B = q.shape[0]
  if lc.kind == "full":
    k, v = lc.k[:, :, :kv_bucket], lc.v[:, :, :kv_bucket]
    return decode_lib.decode_attention(q, k, v, lc.spec, q_pos=q_pos,
                                       kv_pos=_iota_pos(B, kv_bucket), scale=scale, impl=impl)
  if lc.kind == "paged":
    page = lc.k.shape[2]
    table = page_table[:, :kv_bucket // page]
    return decode_lib.decode_attention(q, lc.k, lc.v, lc.spec, q_pos=q_pos,
                                       kv_pos=_iota_pos(B, kv_bucket), page_table=table,
                                       scale=scale, impl=impl)
  return decode_lib.decode_attention(q, lc.k, lc.v, lc.spec, q_pos=q_pos, kv_pos=lc.pos,
                                     scale=scale, impl=impl)
