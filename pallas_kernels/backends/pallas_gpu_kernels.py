"""Kernel bodies of the block-sparse flash attention in Pallas (Triton lowering).

Three kernels, each walking a full-first visit list (``gpu_tables.KernelTables``):

* ``fwd_kernel``  grid (q block, batch, q head): online softmax over the KV blocks of one query
  block; writes the output tile and the base-2 log-sum-exp.
* ``dq_kernel``   grid (q block, batch, q head): dQ over the same KV blocks.
* ``dkv_kernel``  grid (KV block, batch, KV head): dK and dV over the query blocks that visit this
  KV block (the transposed list), for all ``G`` query heads of the KV group, so the GQA reduction
  happens in registers and no atomics are needed.

Conventions: scores are kept unscaled (``s = q k^T`` in fp32); ``c = scale * log2(e)`` is folded
into the exponent, ``p = exp2(s * c - m)`` (one FMA per score), with ``m`` and the log-sum-exp in
base 2. Masked scores are ``-inf``; the running max starts at a finite ``M_INIT`` so a row that has
seen nothing yet keeps ``alpha = 1`` and ``p = 0`` without NaNs. A row that never sees a key ends
with ``l = 0``: zero output and ``lse = -inf``. The backward takes ``lse = +inf`` for such rows (and
for padded rows), so their ``p`` is exactly 0.

Full tiles run without any token mask (only the segment mask, when segment ids are given);
partial tiles apply ``spec.allowed`` (the one shared predicate) plus the ragged-tail bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

M_INIT = -1e30  # finite start of the running max (see module docstring)
_NT = (((1,), (1,)), ((), ()))  # dot_general dims for a @ b.T
_F32 = jnp.float32


def _precision(a):
  # fp32 operands: ask for IEEE fp32 products (Triton's default for f32 can be TF32); bf16/f16
  # operands: native MMA.
  return lax.Precision.HIGHEST if a.dtype == jnp.float32 else None


def _dot_nt(a, b):
  """a [m, d] @ b[n, d].T -> [m, n] in fp32."""
  return lax.dot_general(a, b, _NT, precision=_precision(a), preferred_element_type=_F32)


def _dot(a, b):
  return jnp.dot(a, b, precision=_precision(a), preferred_element_type=_F32)


def _mask(st, qpos, kpos, qseg, kseg, masked: bool, transposed: bool):
  """Boolean tile mask ([bq, bk], or [bk, bq] when ``transposed``), or None when nothing applies.

  ``st`` is the kernel's static config (spec, kv_end, ragged).
  """
  if transposed:
    qp, kp = qpos[None, :], kpos[:, None]
  else:
    qp, kp = qpos[:, None], kpos[None, :]
  mask = None
  if masked:
    mask = st.spec.allowed(qp, kp, xp=jnp)
    if st.ragged:
      mask = mask & (kp < st.kv_end)
  if qseg is not None:
    seg = (qseg[None, :] == kseg[:, None]) if transposed else (qseg[:, None] == kseg[None, :])
    mask = seg if mask is None else mask & seg
  return mask


def _loop2(tab_ref, body, carry):
  """Runs ``body(e, carry, masked)`` over the full entries, then over the partial ones."""
  n_full, n_tot = tab_ref[0], tab_ref[1]
  carry = lax.fori_loop(0, n_full, functools.partial(body, masked=False), carry)
  return lax.fori_loop(n_full, n_tot, functools.partial(body, masked=True), carry)


# ---------------------------------------------------------------------------------- forward
def fwd_kernel(tab_ref, q_ref, k_ref, v_ref, *rest, st):
  """One query block of one head: o = softmax(q k^T * scale) v over the listed KV blocks."""
  if st.has_seg:
    qseg_ref, kseg_ref, o_ref, lse_ref = rest
  else:
    (o_ref, lse_ref), qseg_ref, kseg_ref = rest, None, None
  bq, bk = st.block_q, st.block_k
  qb = st.n_q_blocks - 1 - pl.program_id(0)  # heaviest query blocks (latest rows) first
  q = q_ref[...]
  qpos = st.q_offset + qb * bq + lax.broadcasted_iota(jnp.int32, (bq,), 0)
  qseg = None if qseg_ref is None else qseg_ref[...]
  c = st.c

  def body(e, carry, masked):
    o, m, l = carry
    start = pl.multiple_of(tab_ref[e + 2] * bk, bk)
    sl = pl.ds(start, bk)
    k = k_ref[sl, :]
    s = _dot_nt(q, k)
    kseg = None if kseg_ref is None else kseg_ref[sl]
    mask = _mask(st, qpos, st.kv_offset + start + lax.broadcasted_iota(jnp.int32, (bk,), 0), qseg,
                 kseg, masked, transposed=False)
    if mask is not None:
      s = jnp.where(mask, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1) * c)
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s * c - m_new[:, None])
    l = l * alpha + jnp.sum(p, axis=1)
    v = v_ref[sl, :]
    o = o * alpha[:, None] + _dot(p.astype(v.dtype), v)
    return o, m_new, l

  init = (jnp.zeros((bq, q.shape[-1]), _F32), jnp.full((bq,), M_INIT, _F32),
          jnp.zeros((bq,), _F32))
  o, m, l = _loop2(tab_ref, body, init)
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (o * (1.0 / l_safe)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), -jnp.inf)


# ---------------------------------------------------------------------------------- dQ
def dq_kernel(tab_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest, st):
  """dQ of one query block of one head over the listed KV blocks."""
  if st.has_seg:
    qseg_ref, kseg_ref, dq_ref = rest
  else:
    (dq_ref,), qseg_ref, kseg_ref = rest, None, None
  bq, bk = st.block_q, st.block_k
  qb = st.n_q_blocks - 1 - pl.program_id(0)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  qpos = st.q_offset + qb * bq + lax.broadcasted_iota(jnp.int32, (bq,), 0)
  qseg = None if qseg_ref is None else qseg_ref[...]
  c = st.c

  def body(e, dq, masked):
    start = pl.multiple_of(tab_ref[e + 2] * bk, bk)
    sl = pl.ds(start, bk)
    k, v = k_ref[sl, :], v_ref[sl, :]
    s = _dot_nt(q, k)
    kseg = None if kseg_ref is None else kseg_ref[sl]
    mask = _mask(st, qpos, st.kv_offset + start + lax.broadcasted_iota(jnp.int32, (bk,), 0), qseg,
                 kseg, masked, transposed=False)
    if mask is not None:
      s = jnp.where(mask, s, -jnp.inf)
    p = jnp.exp2(s * c - lse[:, None])
    dp = _dot_nt(do, v)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  dq = _loop2(tab_ref, body, jnp.zeros((bq, q.shape[-1]), _F32))
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


# ---------------------------------------------------------------------------------- dK / dV
def dkv_kernel(tab_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest, st):
  """dK, dV of one KV block of one KV head, summed over the group's query heads."""
  if st.has_seg:
    qseg_ref, kseg_ref, dk_ref, dv_ref = rest
  else:
    (dk_ref, dv_ref), qseg_ref, kseg_ref = rest, None, None
  bq, bk = st.block_q, st.block_k
  kb = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]
  kpos = st.kv_offset + kb * bk + lax.broadcasted_iota(jnp.int32, (bk,), 0)
  kseg = None if kseg_ref is None else kseg_ref[...]
  c = st.c

  def head(g, carry):
    def body(e, carry, masked):
      dk, dv = carry
      start = pl.multiple_of(tab_ref[e + 2] * bq, bq)
      sl = pl.ds(start, bq)
      q, do = q_ref[sl, g, :], do_ref[sl, g, :]
      lse, delta = lse_ref[g, sl], delta_ref[g, sl]
      st_ = _dot_nt(k, q)  # s^T [bk, bq]
      qseg = None if qseg_ref is None else qseg_ref[sl]
      mask = _mask(st, st.q_offset + start + lax.broadcasted_iota(jnp.int32, (bq,), 0), kpos,
                   qseg, kseg, masked, transposed=True)
      if mask is not None:
        st_ = jnp.where(mask, st_, -jnp.inf)
      pt = jnp.exp2(st_ * c - lse[None, :])
      dv = dv + _dot(pt.astype(do.dtype), do)
      dpt = _dot_nt(v, do)
      dst = pt * (dpt - delta[None, :])
      dk = dk + _dot(dst.astype(q.dtype), q)
      return dk, dv

    return _loop2(tab_ref, body, carry)

  d = k.shape[-1]
  carry = (jnp.zeros((bk, d), _F32), jnp.zeros((bk, d), _F32))
  if st.group == 1:
    dk, dv = head(0, carry)
  else:
    dk, dv = lax.fori_loop(0, st.group, head, carry)
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
