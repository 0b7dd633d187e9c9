"""cuDNN's packed (THD, ragged-offset) layout for segment ids: the ``cudnn`` backend's
packed-document path (``cudnn.cudnn_attention`` with ``segment_ids``).

Segment ids (packed documents, Tq == Tk, zero offsets: the training case) use cuDNN's packed
(THD, ragged-offset) layout, both patterns:

* Each contiguous run of equal ids in a row is one cuDNN segment. ``_packing`` turns the ids into
  the primitives' ``q_seqlen [B, M]`` / ``q_offsets [B, M + 1]`` inside jit, already in the form
  jax's ``_fix_seqlen_offsets`` produces (all segments of the batch shifted to the front, token
  offsets of the flattened batch), for a STATIC M = ``max_segments`` (argument, else
  ``$LONGGEN_CUDNN_MAX_SEGMENTS``, else as many slots as an 8 GiB workspace holds, at most 64;
  see ``default_max_segments``: cuDNN's packed backward allocates a full-length fp32 dQ
  accumulator per slot, B*T*Hq*D*4 bytes, measured). The inner primitives are
  bound directly because jax scales the K/V offsets by the query heads (wrong under GQA).
  cuDNN applies causality and the window inside each segment, which is exactly "spec mask AND
  same segment". Padding (id 0 at the end of a row, longgen_jax/data/packing.py) is a segment
  of its own, as in the reference.
* ``sink_window``: the sinks are the row's first ``sink`` tokens (spec.py), so the dense sink
  part is masked by segment too (only the first document of a row has sinks).
* cuDNN's packed softmax stats are ``[B*M, Hq, T]`` (segment slot, head, position in the
  segment); the forward gathers them into lse ``[B, Hq, T]`` (the residual: M times smaller),
  the backward scatters the merged lse back.
* A runtime ``lax.cond`` checks that every row has <= M runs, that each id forms ONE run (a
  repeated id must see itself across the gap) and that kv ids == q ids; otherwise the call runs
  the Pallas Triton kernel (``pallas_gpu.attention``; the dense reference for ``impl="dense"``).
  Both branches are compiled; only one runs.
* Needs cuDNN >= 9.6 (THD with sliding windows) and a Hopper (sm90) or newer GPU (jax refuses the
  packed layout below sm90), and B*T*H*(D+8) < 2**31 (int32 element offsets).
  ``cudnn.why_unsupported`` reports each, so dispatch falls back. Cost to keep in mind: cuDNN's
  stats buffer is B*M*Hq*T fp32 (1 GiB at T=128K, Hq=32, M=64; transient, not a residual).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.backends import _frame
from pallas_kernels.backends.cudnn_common import (_BWD_RAW, _FWD_RAW, _LAYOUT, _MASK_CAUSAL,
                                                  _MASK_NONE, _bwd_with_dlse, _cudnn_version,
                                                  _dense_bwd, _dense_fwd, _fa, _merge_sinks,
                                                  _nu, _sinks_bwd)

# Packed documents (segment ids): static number M of cuDNN segments per row (see the module
# docstring). ``cudnn_attention(max_segments=...)`` wins over the environment variable, which wins
# over the default.
DEFAULT_MAX_SEGMENTS = 64
MAX_SEGMENTS_ENV = "LONGGEN_CUDNN_MAX_SEGMENTS"
PACKED_ENV = "LONGGEN_CUDNN_PACKED"  # "0": refuse segment ids (dispatch falls back to pallas_gpu)
PACKED_WORKSPACE_ENV = "LONGGEN_CUDNN_PACKED_WORKSPACE_GIB"  # memory for the M segment slots
DEFAULT_PACKED_WORKSPACE_GIB = 8.0
_PACKED_MIN_CUDNN = 90600  # THD (ragged) layout with sliding windows: cuDNN 9.6 (frontend 1.9)


@functools.lru_cache(maxsize=1)
def _packed_platform_problem() -> str | None:
  """Why cuDNN's packed (THD) attention cannot run here, or None (call after the GPU checks)."""
  if _FWD_RAW is None or _BWD_RAW is None:
    return "this jax lacks the inner cuDNN attention primitives the packed path binds"
  ver = _cudnn_version()
  if ver is None or ver < _PACKED_MIN_CUDNN:
    return f"segment ids (cuDNN packed layout) need cuDNN >= 9.6, found {ver}"
  try:
    hopper = _fa.check_compute_capability("9.0")
  except Exception as e:  # pylint: disable=broad-except
    return f"cannot read the GPU compute capability ({e})"
  if not hopper:
    return "segment ids (cuDNN packed layout) need a Hopper (sm90) or newer GPU"
  return None


def packed_slot_bytes(batch: int, q_len: int, q_heads: int, head_dim: int) -> int:
  """Device memory cuDNN's packed backward takes per segment slot: B*T*Hq*D fp32 (a dQ
  accumulator of the full length for each of the M slots). Measured on an H100 (jax 0.11.2,
  ``benchmarks/cudnn_packed_memory.py``): the compiled fwd+bwd temp grows by 2.0 GiB per slot at
  T=128K, H=32, D=128 (M=64: 132 GiB against 4 GiB unpacked)."""
  return batch * q_len * q_heads * head_dim * 4


def default_max_segments(batch: int = 1, q_len: int = 0, q_heads: int = 0,
                         head_dim: int = 0) -> int:
  """M, the static number of cuDNN segments per row: ``$LONGGEN_CUDNN_MAX_SEGMENTS`` if set,
  else as many slots as ``$LONGGEN_CUDNN_PACKED_WORKSPACE_GIB`` (default 8) holds, at most 64
  (e.g. 4 at 128K x 32 heads x 128, 16 at 32K). Below 2 the packed path is refused."""
  env = os.environ.get(MAX_SEGMENTS_ENV, "").strip()
  if env:
    return int(env)
  per_slot = packed_slot_bytes(batch, q_len, q_heads, head_dim)
  if per_slot <= 0:
    return DEFAULT_MAX_SEGMENTS
  budget = float(os.environ.get(PACKED_WORKSPACE_ENV, "") or DEFAULT_PACKED_WORKSPACE_GIB)
  return int(min(DEFAULT_MAX_SEGMENTS, budget * 2**30 // per_slot))


class _Packing(NamedTuple):
  """Segment ids [B, T] in the form cuDNN's packed (THD) attention takes (int32, built in jit).

  Fields:
    seqlen: [B, M] what jax's ``_fix_seqlen_offsets`` makes of per-row segment lengths: the
      lengths of ALL segments of the batch, row after row, shifted to the front (slot ``g`` =
      global segment ``g``), 0 in the unused slots.
    offsets: [B, M + 1] likewise for the segment starts, in tokens of the flattened batch
      (``b * T + start``), ``B * T`` in the unused slots (the first of them ends the last
      segment). Scaled by the elements per token (``H * D``) at the cuDNN call.
    slot: [B, T] ``g * T + t_local`` of every token: where its softmax statistic sits in cuDNN's
      packed stats ``[B * M, H, T]`` (segment slot ``g``, position ``t_local`` in the segment).
    ok: [] bool, every row has <= M segments, each id forms ONE contiguous run and the kv ids equal
      the q ids. Otherwise the packed layout cannot express the mask (the caller falls back).
  """
  seqlen: jax.Array
  offsets: jax.Array
  slot: jax.Array
  ok: jax.Array


def _packing(segment_ids, kv_segment_ids, max_segments: int) -> _Packing:
  """``_Packing`` of segment ids [B, T] (contiguous runs of equal ids = one cuDNN segment each)."""
  seg = segment_ids.astype(jnp.int32)
  b, t = seg.shape
  m = int(max_segments)
  first = jnp.concatenate([jnp.ones((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  run = jnp.cumsum(first, axis=1, dtype=jnp.int32) - 1        # run index of each token in its row
  n_runs = run[:, -1] + 1
  srt = jnp.sort(seg, axis=1)
  n_ids = 1 + jnp.sum(srt[:, 1:] != srt[:, :-1], axis=1, dtype=jnp.int32)
  ok = jnp.all((n_runs <= m) & (n_runs == n_ids))
  if kv_segment_ids is not None and kv_segment_ids is not segment_ids:
    ok = ok & jnp.all(kv_segment_ids.astype(jnp.int32) == seg)
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
  starts = jnp.full((b, m), t, jnp.int32).at[rows, jnp.where(first, run, m)].set(pos, mode="drop")
  lens = jnp.diff(jnp.concatenate([starts, jnp.full((b, 1), t, jnp.int32)], axis=1), axis=1)
  g0 = jnp.cumsum(n_runs) - n_runs                               # slot of each row's 1st segment
  j = jnp.arange(m, dtype=jnp.int32)[None]
  g = jnp.where(j < n_runs[:, None], g0[:, None] + j, b * (m + 1))   # out of range: dropped
  seqlen = jnp.zeros((b * m,), jnp.int32).at[g].set(lens, mode="drop")
  offsets = jnp.full((b * (m + 1),), b * t, jnp.int32).at[g].set(rows * t + starts, mode="drop")
  run_c = jnp.minimum(run, m - 1)
  t_local = pos - jnp.take_along_axis(starts, run_c, axis=1)
  slot = (g0[:, None] + run_c) * t + t_local
  return _Packing(seqlen.reshape(b, m), offsets.reshape(b, m + 1), slot, ok)


def _stats_to_lse(stats, slot):
  """cuDNN packed softmax stats [B*M, H, T] -> lse [B, H, T] fp32 (gather at ``slot``)."""
  bm, h, t = stats.shape
  flat = jnp.swapaxes(stats, 1, 2).reshape(bm * t, h)
  return jnp.swapaxes(jnp.take(flat, slot, axis=0, mode="clip"), 1, 2).astype(jnp.float32)


def _lse_to_stats(lse, slot, bm):
  """lse [B, H, T] -> cuDNN packed stats [B*M, H, T] (0 in slots no token uses)."""
  b, h, t = lse.shape
  vals = jnp.swapaxes(lse.astype(jnp.float32), 1, 2).reshape(b * t, h)
  flat = jnp.zeros((bm * t, h), jnp.float32).at[slot.reshape(-1)].set(vals, mode="drop")
  return jnp.swapaxes(flat.reshape(bm, t, h), 1, 2)


def _packed_cudnn_args(q, k, pk):
  """(q_seqlen, kv_seqlen, q_offsets, kv_offsets) in cuDNN's form: offsets in ELEMENTS of Q/O
  (``Hq * D`` per token) and of K/V (``Hkv * D`` per token)."""
  d = q.shape[3]
  return pk.seqlen, pk.seqlen, pk.offsets * (q.shape[2] * d), pk.offsets * (k.shape[2] * d)


def _cudnn_fwd_packed(q, k, v, pk, *, scale, causal, window):
  """(out [B,T,Hq,D], stats [B*M, Hq, T] fp32) of cuDNN's packed flash attention."""
  nu = _nu(q.dtype)
  out, stats = _FWD_RAW.bind(
      q, k, v, nu, *_packed_cudnn_args(q, k, pk), nu, nu, scale=float(scale), seed=42,
      dropout_rate=0.0, variadic_args=(False, False),
      mask_type=_MASK_CAUSAL if causal else _MASK_NONE, layout=_LAYOUT,
      sliding_window_length=window, is_training=True)
  return out, stats


def _cudnn_bwd_packed_plain(q, k, v, o, stats, do, *, pk, scale, causal, window):
  nu = _nu(q.dtype)
  grads = _BWD_RAW.bind(
      q, k, v, nu, *_packed_cudnn_args(q, k, pk), nu, nu, stats, o.astype(q.dtype),
      do.astype(q.dtype), scale=float(scale), seed=42, dropout_rate=0.0,
      variadic_args=(False, False), mask_type=_MASK_CAUSAL if causal else _MASK_NONE,
      layout=_LAYOUT, sliding_window_length=window)
  return tuple(grads[:3])


def _emulated_layout(pk, b, t):
  """(slot g, t_local) [B, T] of every token as a packed kernel reads the cuDNN-form arrays
  (segment g covers flattened tokens [offsets[g], offsets[g] + seqlen[g])); g = -1 where no
  segment covers the token."""
  ln = pk.seqlen.reshape(-1)
  off = pk.offsets.reshape(-1)[:ln.shape[0]]
  p = jnp.arange(b * t, dtype=jnp.int32).reshape(b, t)
  g = jnp.searchsorted(off, p, side="right").astype(jnp.int32) - 1
  gc = jnp.maximum(g, 0)
  covered = (g >= 0) & (p < off[gc] + ln[gc])
  return jnp.where(covered, g, -1), p - off[gc]


def _emulated_mask(pk, b, t, causal, window):
  g, tl = _emulated_layout(pk, b, t)
  m = (g[:, :, None] == g[:, None, :]) & (g[:, :, None] >= 0)
  if causal:
    m = m & (tl[:, None, :] <= tl[:, :, None])
  if window is not None:
    m = m & (tl[:, :, None] - tl[:, None, :] < window)
  slot = jnp.where(g >= 0, g * t + tl, pk.seqlen.size * t)
  return m[:, None, None], g, slot


def _emulated_fwd_packed(q, k, v, pk, *, scale, causal, window):
  """Dense stand-in for ``_cudnn_fwd_packed`` (impl="dense"): same inputs, same stats layout."""
  b, t = q.shape[:2]
  mask, g, slot = _emulated_mask(pk, b, t, causal, window)
  o, lse = _dense_fwd(q, k, v, mask, scale=scale)
  o = jnp.where((g >= 0)[:, :, None, None], o, jnp.nan)  # a token no segment covers: garbage
  return o.astype(q.dtype), _lse_to_stats(lse, slot, pk.seqlen.size)


def _emulated_bwd_packed_plain(q, k, v, o, stats, do, *, pk, scale, causal, window):
  """Dense stand-in for ``_cudnn_bwd_packed_plain``: delta from (dO, O), lse read from stats."""
  b, t = q.shape[:2]
  mask, _, slot = _emulated_mask(pk, b, t, causal, window)
  return _dense_bwd(q, k, v, o, _stats_to_lse(stats, slot), do, None, mask, scale=scale)


def _packed_forward(q, k, v, seg, pk, plan):
  impl, scale, causal, window, n_sink = plan
  fwd = _cudnn_fwd_packed if impl == "cudnn" else _emulated_fwd_packed
  out, stats = fwd(q, k, v, pk, scale=scale, causal=causal, window=window)
  lse = _stats_to_lse(stats, pk.slot)
  if n_sink:
    out, lse = _merge_sinks(q, k, v, out, lse, scale=scale, window=window, n_sink=n_sink, seg=seg)
  return out, lse


def _packed_backward(q, k, v, seg, pk, out, lse, dout, dlse, plan):
  impl, scale, causal, window, n_sink = plan
  fn = _cudnn_bwd_packed_plain if impl == "cudnn" else _emulated_bwd_packed_plain
  plain = functools.partial(fn, pk=pk, scale=scale, causal=causal, window=window)
  stats = _lse_to_stats(lse, pk.slot, pk.seqlen.size)  # the MERGED lse, in cuDNN's layout
  dq, dk, dv = _bwd_with_dlse(plain, q, k, v, out, stats, dout, dlse)
  if n_sink:
    dq, dk, dv = _sinks_bwd(q, k, v, out, lse, dout, dlse, dq, dk, dv, scale=scale,
                            window=window, n_sink=n_sink, seg=seg)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


# Residuals (``_frame``) keep the compact lse [B, H, T] (tagged like every backend's), never
# cuDNN's packed stats [B*M, H, T] (M times larger); the backward scatters it back.
_packed_attn_lse = _frame.differentiable(_packed_forward, _packed_backward, True)
_packed_attn = _frame.differentiable(_packed_forward, _packed_backward, False)


def _fallback(impl, spec, scale, return_lse, q, k, v, seg, kv_seg):
  """Segment ids the packed layout cannot express (``_Packing.ok`` False): the Pallas Triton
  kernel (``pallas_gpu``) on GPU, the dense reference for ``impl="dense"`` (tests)."""
  if impl == "cudnn":
    from pallas_kernels.backends import pallas_gpu  # pylint: disable=import-outside-toplevel
    fn = pallas_gpu.attention
  else:
    from pallas_kernels import reference  # pylint: disable=import-outside-toplevel
    fn = reference.reference_attention
  return fn(q, k, v, spec, segment_ids=seg, kv_segment_ids=kv_seg, scale=scale,
            return_lse=return_lse)


def _segmented(q, k, v, segment_ids, kv_segment_ids, spec, plan, return_lse, max_segments):
  """The packed path behind a runtime ``lax.cond`` on ``_Packing.ok`` (else ``_fallback``)."""
  pk = _packing(segment_ids, kv_segment_ids, max_segments)
  kv_seg = segment_ids if kv_segment_ids is None else kv_segment_ids
  attn = _packed_attn_lse if return_lse else _packed_attn

  def packed(q, k, v, seg, kv_seg, pk):
    del kv_seg  # equal to seg wherever this branch runs
    return attn(q, k, v, seg, pk, plan)

  def fallback(q, k, v, seg, kv_seg, pk):
    del pk
    return _fallback(plan[0], spec, plan[1], return_lse, q, k, v, seg, kv_seg)

  return jax.lax.cond(pk.ok, packed, fallback, q, k, v, segment_ids, kv_seg, pk)
