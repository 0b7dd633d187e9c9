"""Pieces shared by the cuDNN backend's two paths: ``cudnn.py`` (dense rows) and
``cudnn_packed.py`` (packed documents).

The cuDNN primitives (bound directly, see ``cudnn.py``), the widened backward that carries an lse
cotangent through cuDNN's backward, dense XLA attention (the sink part, and the ``impl="dense"``
stand-in the CPU tests use) and the LSE merge of the sink part with the main part.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import lse_merge

NEG_INF = float("-inf")
_PAD_D = 8  # head-dim widening that carries an lse cotangent through cuDNN's backward

try:  # private: the primitives behind jax.nn.dot_product_attention(implementation="cudnn")
  from jax._src.cudnn import fused_attention_stablehlo as _fa
  _FWD_P = _fa._dot_product_attention_fwd_p_wrapper  # pylint: disable=protected-access
  _BWD_P = _fa._dot_product_attention_bwd_p_wrapper  # pylint: disable=protected-access
  _MASK_CAUSAL, _MASK_NONE = _fa.MaskType.CAUSAL, _fa.MaskType.NO_MASK
  _LAYOUT = _fa.AttentionLayout.BTNH.value
  # The packed path binds the inner primitives (no ``_fix_seqlen_offsets``): it passes cuDNN-form
  # seqlens / ragged offsets itself, because jax scales the K/V offsets by the QUERY heads
  # (``kv_offsets * N * H`` with N = Hq), which is wrong for grouped-query attention.
  _FWD_RAW = getattr(_fa, "_dot_product_attention_fwd_p", None)
  _BWD_RAW = getattr(_fa, "_dot_product_attention_bwd_p", None)
  _IMPORT_ERROR = None
except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the jax build
  _fa = _FWD_P = _BWD_P = _FWD_RAW = _BWD_RAW = _MASK_CAUSAL = _MASK_NONE = _LAYOUT = None
  _IMPORT_ERROR = f"cuDNN attention primitives not found in this jax ({e})"


def _cudnn_version() -> int | None:
  try:
    return int(_fa.check_cudnn_version())
  except Exception:  # pylint: disable=broad-except
    return None


# ----------------------------------------------------------------------------- cuDNN pieces
def _nu(dtype):
  return jnp.zeros((0,), dtype)


def _cudnn_fwd(q, k, v, *, scale, causal, window):
  """(out [B,T,Hq,D] q.dtype, lse [B,Hq,T] fp32) of cuDNN flash attention."""
  nu = _nu(q.dtype)
  out, stats = _FWD_P.bind(
      q, k, v, nu, nu, nu, nu, nu, nu, nu, scale=float(scale), seed=42, dropout_rate=0.0,
      variadic_args=(False, False), mask_type=_MASK_CAUSAL if causal else _MASK_NONE,
      layout=_LAYOUT, sliding_window_length=window, is_training=True)
  return out, stats.astype(jnp.float32).reshape(q.shape[0], q.shape[2], q.shape[1])


def _cudnn_bwd_plain(q, k, v, o, lse, do, *, scale, causal, window):
  nu = _nu(q.dtype)
  grads = _BWD_P.bind(
      q, k, v, nu, nu, nu, nu, nu, nu, nu, lse, o.astype(q.dtype), do.astype(q.dtype),
      scale=float(scale), seed=42, dropout_rate=0.0, variadic_args=(False, False),
      mask_type=_MASK_CAUSAL if causal else _MASK_NONE, layout=_LAYOUT,
      sliding_window_length=window)
  return tuple(grads[:3])


def _widened_bwd(plain_bwd, q, k, v, o, lse, do, dlse):
  """Runs ``plain_bwd(q, k, v, o, lse, do)`` (which derives delta = <dO, O> itself) so that it
  honours an lse cotangent: widen D by zero columns, ``O' = [O, 1, 0..]``, ``dO' = [dO, -dlse,
  0..]``. Scores, P and dP are unchanged; delta becomes ``<dO, O> - dlse``."""
  d = q.shape[-1]
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, _PAD_D)))
  col = jnp.swapaxes(dlse, 1, 2)[..., None].astype(do.dtype)  # [B, T, H, 1]
  zeros = jnp.zeros(o.shape[:-1] + (_PAD_D - 1,), do.dtype)
  o2 = jnp.concatenate([o.astype(do.dtype), jnp.ones_like(col), zeros], axis=-1)
  do2 = jnp.concatenate([do, -col, zeros], axis=-1)
  dq, dk, dv = plain_bwd(pad(q), pad(k), pad(v), o2, lse, do2)
  return dq[..., :d], dk[..., :d], dv[..., :d]


def _bwd_with_dlse(plain, q, k, v, o, stats, do, dlse):
  """``plain(q, k, v, o, stats, do)`` (delta from (dO, O) inside), widened when dlse != 0."""
  do = do.astype(q.dtype)
  if dlse is None:
    return plain(q, k, v, o, stats, do)
  return jax.lax.cond(jnp.any(dlse != 0), lambda a: _widened_bwd(plain, *a),
                      lambda a: plain(*a[:-1]), (q, k, v, o, stats, do, dlse.astype(jnp.float32)))


def _cudnn_bwd(q, k, v, o, lse, do, dlse, *, scale, causal, window):
  """(dq, dk, dv) of this part given the merged (o, lse), dO and optional dlse."""
  plain = functools.partial(_cudnn_bwd_plain, scale=scale, causal=causal, window=window)
  return _bwd_with_dlse(plain, q, k, v, o, lse, do, dlse)


# ----------------------------------------------------------------------------- dense pieces
def _group(x, hkv):
  b, t, h, d = x.shape
  return x.reshape(b, t, hkv, h // hkv, d)


def _dense_fwd(q, k, v, mask, *, scale):
  """Dense masked attention of q over (k, v); mask bool [Tq, Tk]. Returns (out, lse fp32).

  Matmul operands stay in the input dtype (fp32 accumulation), like a flash kernel; ``out`` is in
  q's dtype.
  """
  b, tq, hq, d = q.shape
  hkv = k.shape[2]
  s = jnp.einsum("bqhgd,bkhd->bhgqk", _group(q, hkv), k,
                 preferred_element_type=jnp.float32) * scale
  s = jnp.where(mask, s, NEG_INF)
  m = jnp.max(s, axis=-1)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(mask, jnp.exp(s - m_safe[..., None]), 0.0)
  l = jnp.sum(p, axis=-1)
  l_safe = jnp.where(l > 0, l, 1.0)
  o = jnp.einsum("bhgqk,bkhd->bqhgd", (p / l_safe[..., None]).astype(v.dtype), v,
                 preferred_element_type=jnp.float32)
  lse = jnp.where(l > 0, m_safe + jnp.log(l_safe), NEG_INF)
  return o.reshape(b, tq, hq, d).astype(q.dtype), lse.reshape(b, hq, tq)


def _dense_bwd(q, k, v, o, lse, do, dlse, mask, *, scale):
  """Flash backward of one dense part with the merged (o, lse): fp32 (dq, dk, dv)."""
  b, tq, hq, d = q.shape
  hkv = k.shape[2]
  g = hq // hkv
  lo = v.dtype  # matmul operand dtype (fp32 accumulation)
  qg = _group(q, hkv)
  s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32) * scale
  lse_g = lse.reshape(b, hkv, g, tq)
  lse_g = jnp.where(jnp.isfinite(lse_g), lse_g, 0.0)
  p = jnp.where(mask, jnp.exp(s - lse_g[..., None]), 0.0)
  dog = _group(do, hkv).astype(lo)
  f32 = dict(preferred_element_type=jnp.float32)
  dv = jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(lo), dog, **f32)
  dp = jnp.einsum("bqhgd,bkhd->bhgqk", dog, v, **f32)
  delta = lse_merge.delta(o, do, dlse).reshape(b, hkv, g, tq)
  ds = (p * (dp - delta[..., None])).astype(lo)
  dq = jnp.einsum("bhgqk,bkhd->bqhgd", ds, k, **f32) * scale
  dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds, qg.astype(lo), **f32) * scale
  return dq.reshape(b, tq, hq, d), dk, dv


def _main_mask(tq, tk, causal, window):
  i = jnp.arange(tq)[:, None]
  j = jnp.arange(tk)[None, :]
  m = (j <= i) if causal else jnp.ones((tq, tk), bool)
  if window is not None:
    m = m & (i - j < window)
  return m


def _sink_mask(r0, tq, n_sink, window):
  """For query rows i in [r0, tq): sink keys j < n_sink the window (i - W, i] misses, j <= i - W."""
  return jnp.arange(n_sink)[None, :] <= jnp.arange(r0, tq)[:, None] - window


def _sink_part_mask(seg, r0, tq, n_sink, window):
  """``_sink_mask``, and with segment ids [B, T] only the sinks of the query's own segment
  ([B, 1, 1, rows, n_sink]; the sinks are the row's first tokens, spec.py)."""
  m = _sink_mask(r0, tq, n_sink, window)
  if seg is None:
    return m
  return (m[None] & (seg[:, r0:, None] == seg[:, None, :n_sink]))[:, None, None]


def _add_rows(x, start, axis, part):
  """x with ``part`` added to rows [start, start + len) along ``axis`` (fp32 add, in x's dtype)."""
  idx = (slice(None),) * axis + (slice(start, start + part.shape[axis]),)
  return x.at[idx].set((x[idx].astype(jnp.float32) + part).astype(x.dtype))


# ----------------------------------------------------------------------------- sinks
def _merge_sinks(q, k, v, out, lse, *, scale, window, n_sink, seg=None):
  """(out, lse) of the main part merged with the dense sink part (optionally segment-masked)."""
  # Query rows i < W see no sink outside their window (j <= i - W < 0): only rows [W, T).
  r0, t = window, q.shape[1]
  o_s, l_s = _dense_fwd(q[:, r0:], k[:, :n_sink], v[:, :n_sink],
                        _sink_part_mask(seg, r0, t, n_sink, window), scale=scale)
  o_m, l_m = lse_merge.merge_forward([out[:, r0:], o_s], [lse[..., r0:], l_s], out_dtype=q.dtype)
  return out.at[:, r0:].set(o_m), lse.at[..., r0:].set(l_m)


def _sinks_bwd(q, k, v, out, lse, dout, dlse, dq, dk, dv, *, scale, window, n_sink, seg=None):
  """Adds the sink part's share of the gradients (merged statistics) to (dq, dk, dv)."""
  r0, t = window, q.shape[1]
  dq_s, dk_s, dv_s = _dense_bwd(q[:, r0:], k[:, :n_sink], v[:, :n_sink], out[:, r0:],
                                lse[..., r0:], dout[:, r0:],
                                None if dlse is None else dlse[..., r0:],
                                _sink_part_mask(seg, r0, t, n_sink, window), scale=scale)
  return _add_rows(dq, r0, 1, dq_s), _add_rows(dk, 0, 1, dk_s), _add_rows(dv, 0, 1, dv_s)
