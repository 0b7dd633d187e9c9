"""Block-sparse flash attention in plain XLA (the portable backend, ``backend="xla"``).

Every query tile visits only the KV tiles its block-table row lists: a ``lax.fori_loop`` over the
table columns gathers one KV tile per query tile (all query tiles at once), runs an fp32 online
softmax and masks padded table entries. Table rows are reordered so the (few) partial tiles come
first: the token mask is evaluated only in the first ``n_masked`` steps; the remaining steps are
full tiles (only padding entries and, when given, segment ids are masked there).

GQA: the G query heads of a KV head are stacked per tile (``[B, Hkv, n_q, G * block_q, D]``), so
each gathered K/V tile is used by all of them in one batched matmul (K/V are never repeated).
Peak memory is O(L * block * H) (one score tile per query tile); nothing of size L x L is built.

The backward (``jax.custom_vjp``, see ``_frame``) recomputes each tile's probabilities from the
saved lse: dQ accumulates per query tile and dK/dV are scatter-added into their KV tiles within the
same loop over the *forward* table. (The per-KV-tile ``bwd_*`` tables are not used here: their
padded width is the number of query tiles whenever a sink or stride column exists, which would
make a vectorised loop cost ``(L / block) ** 2`` tile steps.)
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels.backends import _frame
from pallas_kernels.block_tables import block_tables
from pallas_kernels.spec import as_spec

_F32 = jnp.float32
_IN_BOUNDS = "promise_in_bounds"


def xla_attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                  kv_offset: int = 0, scale: float | None = None, return_lse: bool = False,
                  block_q: int | None = None, block_k: int | None = None):
  """Blocked attention; same contract as ``pallas_kernels.api.attention`` (docs/architecture §2).

  ``block_q`` / ``block_k`` override the tiles (default ``spec.block``, shrunk for short inputs).
  """
  spec = as_spec(spec)
  kv_segment_ids = _frame.check_inputs(q, k, v, segment_ids, kv_segment_ids, q_offset, kv_offset,
                                       scale)
  prob = _frame.make_problem(spec, q, k, q_offset=q_offset, kv_offset=kv_offset, scale=scale,
                             block_q=block_q, block_k=block_k)
  return _frame.run_blocked(_forward, _backward, prob, q, k, v, segment_ids, kv_segment_ids,
                            return_lse)


@functools.lru_cache(maxsize=64)
def _schedule(prob: _frame.Problem):
  """Forward table with each row's partial entries first: (idx, valid, n_masked), numpy."""
  bt = block_tables(prob.spec, prob.q_len, prob.kv_len, block_q=prob.block_q,
                    block_k=prob.block_k, q_offset=prob.q_offset, kv_offset=prob.kv_offset)
  idx, part = bt.fwd_idx, bt.fwd_partial
  valid = np.arange(idx.shape[1])[None, :] < bt.fwd_cnt[:, None]
  order = np.argsort(np.where(valid, np.where(part, 0, 1), 2), axis=1, kind="stable")
  idx = np.take_along_axis(idx, order, 1)
  valid = np.take_along_axis(valid, order, 1)
  n_masked = int((part & valid).sum(1).max(initial=0))
  return idx.astype(np.int32), valid, n_masked


def _mask(prob, q_blk, k_blk, ok, token, q_seg, kv_seg):
  """Visibility ``[1 or B, n, block_q, block_k]`` of one table column (``ok``: real entries)."""
  m = ok[:, None, None]
  if token:
    m = m & _frame.token_mask(prob, q_blk, k_blk)
  m = m[None]
  if q_seg is not None:
    m = m & (q_seg[:, :, :, None] == kv_seg[:, :, None, :])
  return m


def _apply_mask(s, mask, groups):
  """``s [B, Hkv, n, G * block_q, block_k]`` with ``-inf`` where ``mask [B|1, n, bq|1, bk|1]``."""
  B, h, n, gq, bk = s.shape
  s = s.reshape(B, h, n, groups, gq // groups, bk)
  s = jnp.where(mask[:, None, :, None], s, -jnp.inf)
  return s.reshape(B, h, n, gq, bk)


def _dot(spec, a, b, dtype):
  prec = lax.Precision.HIGHEST if dtype == jnp.float32 else None
  return jnp.einsum(spec, a, b, preferred_element_type=_F32, precision=prec)


def _heads_major(x, n, b, hkv):
  """[B, T, H, D] -> [B, Hkv, n, G * b, D]: each KV head's G query heads stacked per tile."""
  B, _, h, d = x.shape
  g = h // hkv
  x = x.reshape(B, n, b, hkv, g, d).transpose(0, 3, 1, 4, 2, 5)
  return x.reshape(B, hkv, n, g * b, d)


def _heads_minor(x, b, hq):
  """Inverse of ``_heads_major``."""
  B, hkv, n, gb, d = x.shape
  g = gb // b
  return x.reshape(B, hkv, n, g, b, d).transpose(0, 2, 4, 1, 3, 5).reshape(B, n * b, hq, d)


def _stats_major(x, n, b, hkv):
  """[B, Hq, T] -> [B, Hkv, n, G * b] (the row layout of the score tiles)."""
  B, hq, _ = x.shape
  x = x.reshape(B, hkv, hq // hkv, n, b).transpose(0, 1, 3, 2, 4)
  return x.reshape(B, hkv, n, hq // hkv * b)


def _stats_minor(x, b):
  B, hkv, n, gb = x.shape
  g = gb // b
  return x.reshape(B, hkv, n, g, b).transpose(0, 1, 3, 2, 4).reshape(B, hkv * g, n * b)


def _seg_tiles(q_seg, kv_seg, prob):
  if q_seg is None:
    return None, None
  B = q_seg.shape[0]
  return (q_seg.reshape(B, prob.n_q, prob.block_q), kv_seg.reshape(B, prob.n_kv, prob.block_k))


def _gather(x, idx, axis):
  """Tiles ``x[..., idx, ...]`` along ``axis`` (table indices are always in range)."""
  where = (slice(None),) * axis + (idx,)
  return x.at[where].get(mode=_IN_BOUNDS)


def _column(table, t):
  return lax.dynamic_index_in_dim(table, t, axis=1, keepdims=False)


def _two_loops(step, n_masked, width, carry):
  """Table columns ``[0, n_masked)`` with the token mask, then ``[n_masked, width)`` without."""
  if n_masked > 0:
    carry = lax.fori_loop(0, n_masked, functools.partial(step, token=True), carry)
  if width > n_masked:
    carry = lax.fori_loop(n_masked, width, functools.partial(step, token=False), carry)
  return carry


def _forward(q, k, v, q_seg, kv_seg, prob):
  idx_np, valid_np, n_masked = _schedule(prob)
  idx, valid = jnp.asarray(idx_np), jnp.asarray(valid_np)
  B, _, hq, d = q.shape
  hkv, n, bq, dt = k.shape[2], prob.n_q, prob.block_q, q.dtype
  g = hq // hkv
  qh = _heads_major(q, n, bq, hkv)
  kh, vh = (_heads_major(x, prob.n_kv, prob.block_k, hkv) for x in (k, v))
  qs, ks = _seg_tiles(q_seg, kv_seg, prob)
  q_blk = jnp.arange(n, dtype=jnp.int32)

  def step(t, carry, token):
    m, l, acc = carry
    k_blk, ok = _column(idx, t), _column(valid, t)
    kt, vt = _gather(kh, k_blk, 2), _gather(vh, k_blk, 2)
    s = _dot("bhnqd,bhnkd->bhnqk", qh, kt, dt) * prob.scale
    ks_t = None if ks is None else _gather(ks, k_blk, 1)
    s = _apply_mask(s, _mask(prob, q_blk, k_blk, ok, token, qs, ks_t), g)
    m_new = jnp.maximum(m, s.max(-1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)     # rows with nothing seen yet
    p = jnp.exp(s - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)
    l = alpha * l + p.sum(-1)
    acc = alpha[..., None] * acc + _dot("bhnqk,bhnkd->bhnqd", p.astype(dt), vt, dt)
    return m_new, l, acc

  rows = (B, hkv, n, g * bq)
  init = (jnp.full(rows, -jnp.inf, _F32), jnp.zeros(rows, _F32), jnp.zeros((*rows, d), _F32))
  m, l, acc = _two_loops(step, n_masked, idx_np.shape[1], init)
  seen = l > 0
  out = acc / jnp.where(seen, l, 1.0)[..., None]
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
  return _heads_minor(out.astype(dt), bq, hq), _stats_minor(lse, bq)


def _backward(q, k, v, q_seg, kv_seg, out, lse, d_out, d_lse, prob):
  idx_np, valid_np, n_masked = _schedule(prob)
  idx, valid = jnp.asarray(idx_np), jnp.asarray(valid_np)
  B, _, hq, d = q.shape
  hkv, n, bq, dt = k.shape[2], prob.n_q, prob.block_q, q.dtype
  g = hq // hkv
  qh, doh = (_heads_major(x, n, bq, hkv) for x in (q, d_out.astype(dt)))
  kh, vh = (_heads_major(x, prob.n_kv, prob.block_k, hkv) for x in (k, v))
  qs, ks = _seg_tiles(q_seg, kv_seg, prob)
  lse_b, delta = _frame.bwd_row_stats(out, lse, d_out, d_lse)
  lse_b, delta = _stats_major(lse_b, n, bq, hkv), _stats_major(delta, n, bq, hkv)
  q_blk = jnp.arange(n, dtype=jnp.int32)

  def step(t, carry, token):
    dq, dk, dv = carry
    k_blk, ok = _column(idx, t), _column(valid, t)
    kt, vt = _gather(kh, k_blk, 2), _gather(vh, k_blk, 2)
    s = _dot("bhnqd,bhnkd->bhnqk", qh, kt, dt) * prob.scale
    ks_t = None if ks is None else _gather(ks, k_blk, 1)
    s = _apply_mask(s, _mask(prob, q_blk, k_blk, ok, token, qs, ks_t), g)
    p = jnp.exp(s - lse_b[..., None])
    dp = _dot("bhnqd,bhnkd->bhnqk", doh, vt, dt)
    ds = (p * (dp - delta[..., None])).astype(dt)
    dq = dq + _dot("bhnqk,bhnkd->bhnqd", ds, kt, dt)
    dk = dk.at[:, :, k_blk].add(_dot("bhnqk,bhnqd->bhnkd", ds, qh, dt), mode=_IN_BOUNDS)
    dv = dv.at[:, :, k_blk].add(_dot("bhnqk,bhnqd->bhnkd", p.astype(dt), doh, dt),
                                mode=_IN_BOUNDS)
    return dq, dk, dv

  init = (jnp.zeros(qh.shape, _F32), jnp.zeros(kh.shape, _F32), jnp.zeros(vh.shape, _F32))
  dq, dk, dv = _two_loops(step, n_masked, idx_np.shape[1], init)
  dq = _heads_minor((dq * prob.scale).astype(dt), bq, hq)
  dk = _heads_minor((dk * prob.scale).astype(k.dtype), prob.block_k, hkv)
  return dq, dk, _heads_minor(dv.astype(v.dtype), prob.block_k, hkv)
