"""cuDNN flash attention for the ``full`` and ``sink_window`` patterns (backend ``cudnn``).

Why not just ``jax.nn.dot_product_attention(implementation="cudnn")``: in jax 0.10.2 and 0.11.2
its ``return_residual=True`` lse is cast to the OUTPUT dtype (bf16: ~3 significant digits, too
coarse to merge partial attentions) and its backward drops the lse cotangent. So this module
binds the same cuDNN primitives the public API uses (``jax._src.cudnn.fused_attention_stablehlo``,
identical argument lists in 0.10.2 and 0.11.2) to get the fp32 softmax statistics, and runs the
cuDNN backward itself under one ``custom_vjp``:

* ``full`` (q_offset == kv_offset, Tq == Tk): one cuDNN causal call. Chunk pairs that are
  entirely visible (``q_offset >= kv_offset + Tk - 1``, the off-diagonal steps of ring
  attention) run without a mask.
* ``sink_window``: cuDNN sliding-window causal attention over ``(i - W, i]``
  (``sliding_window_length = W``, the public API's ``local_window_size=(W - 1, 0)`` with
  ``is_causal=True``) merged by log-sum-exp (``lse_merge``) with a small dense XLA attention
  (bf16 matmuls, fp32 softmax) of the query rows ``i >= W`` over the sink keys ``j < sink`` that
  the window does not cover (``j <= i - W``; rows ``i < W`` have none). The two key sets are
  disjoint and their union is exactly ``spec.allowed``. Measured on an H100 this costs ~27 %
  (forward) / ~17 % (fwd+bwd) over cuDNN's window-only kernel at 128K (docs/kernels.md).
* backward: each part runs its flash backward with the MERGED output and lse (and the lse
  cotangent folded into delta), which gives exactly that part's share of dQ and its dK, dV.
  cuDNN computes delta from (dO, O) itself, so a non-zero lse cotangent (``return_lse=True``
  callers that differentiate through lse, e.g. ring attention) is passed by widening the head
  dim by 8 zero columns with ``O' = [O, 1, 0..]`` and ``dO' = [dO, -dlse, 0..]``; a runtime
  ``lax.cond`` takes the plain path when dlse is all zero.

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
  ``why_unsupported`` reports each, so dispatch falls back. Cost to keep in mind: cuDNN's stats
  buffer is B*M*Hq*T fp32 (1 GiB at T=128K, Hq=32, M=64; transient, not a residual).

Not supported (``why_unsupported`` says which, the dispatcher falls back): the ``strided``
pattern, offsets other than the two ``full`` cases above, non-zero offsets for ``sink_window``
(and any offset or Tq != Tk with segment ids), dtypes other than bf16/fp16, head_dim not a
multiple of 8 or > 248 (room for the widening), and any platform but CUDA.

``impl="dense"`` swaps the cuDNN calls for dense XLA attention with the same masks: it is what the
CPU tests use to check the decomposition, the merge and the custom gradients.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import lse_merge
from pallas_kernels._common import tag_residuals
from pallas_kernels.spec import AttentionSpec, as_spec

NEG_INF = float("-inf")
_PAD_D = 8  # head-dim widening that carries an lse cotangent through cuDNN's backward
# Suggested ``register_backend`` priority (docs/kernels.md, "cuDNN, jax-triton and dispatch
# measurements"): cuDNN first wherever it applies (full causal, sink_window).
REGISTRY_PRIORITY = 70
# Packed documents (segment ids): static number M of cuDNN segments per row (see the module
# docstring). ``cudnn_attention(max_segments=...)`` wins over the environment variable, which wins
# over the default.
DEFAULT_MAX_SEGMENTS = 64
MAX_SEGMENTS_ENV = "LONGGEN_CUDNN_MAX_SEGMENTS"
PACKED_ENV = "LONGGEN_CUDNN_PACKED"  # "0": refuse segment ids (dispatch falls back to pallas_gpu)
PACKED_WORKSPACE_ENV = "LONGGEN_CUDNN_PACKED_WORKSPACE_GIB"  # memory for the M segment slots
DEFAULT_PACKED_WORKSPACE_GIB = 8.0
_PACKED_MIN_CUDNN = 90600  # THD (ragged) layout with sliding windows: cuDNN 9.6 (frontend 1.9)

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
  _fa = _FWD_RAW = _BWD_RAW = None
  _IMPORT_ERROR = f"cuDNN attention primitives not found in this jax ({e})"


class CudnnError(ValueError):
  """The cudnn backend cannot run this call (one clear line)."""


# ----------------------------------------------------------------------------- support checks
def _cudnn_version() -> int | None:
  try:
    return int(_fa.check_cudnn_version())
  except Exception:  # pylint: disable=broad-except
    return None


@functools.lru_cache(maxsize=1)
def _platform_problem() -> str | None:
  if _IMPORT_ERROR:
    return _IMPORT_ERROR
  if jax.default_backend() != "gpu":
    return f"cuDNN needs a CUDA GPU (jax.default_backend()={jax.default_backend()!r})"
  ver = _cudnn_version()
  if ver is None:
    return "cuDNN is not detected"
  if ver < 90000:
    return f"cuDNN >= 9.0 needed for sliding windows and fp32 stats, found {ver}"
  return None


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


def _plan(spec: AttentionSpec, tq: int, tk: int, q_offset: int, kv_offset: int):
  """(causal, window, sink_keys) for a supported call, or a str saying why not."""
  if spec.kind == "full":
    if q_offset == kv_offset and tq == tk:
      return True, None, 0
    if q_offset >= kv_offset + tk - 1:
      return False, None, 0
    return ("full attention with offsets runs on cuDNN only for the diagonal chunk "
            "(q_offset == kv_offset, Tq == Tk) or a fully visible one (q_offset >= kv_offset+Tk-1)")
  if spec.kind == "sink_window":
    if q_offset or kv_offset or tq != tk:
      return "sink_window on cuDNN needs q_offset == kv_offset == 0 and Tq == Tk"
    return True, spec.window, max(0, min(spec.sink, tq - spec.window))
  return f"cuDNN has no {spec.kind!r} pattern (block-sparse: use pallas_gpu / xla)"


def unsupported_reason(spec, *, q_len: int, kv_len: int, q_heads: int, kv_heads: int,
                       head_dim: int, dtype, q_offset: int = 0, kv_offset: int = 0,
                       has_segment_ids: bool = False, check_platform: bool = True,
                       batch: int = 1) -> str | None:
  """None when ``cudnn_attention`` runs a call with these static facts, else a one-line reason."""
  spec = as_spec(spec)
  if check_platform:
    problem = _platform_problem()
    if problem:
      return problem
  if has_segment_ids:
    if os.environ.get(PACKED_ENV, "1") == "0":
      return f"segment ids on cuDNN disabled by ${PACKED_ENV}=0"
    if check_platform:
      problem = _packed_platform_problem()
      if problem:
        return problem
    if q_len != kv_len or q_offset or kv_offset:
      return ("segment ids on cuDNN need Tq == Tk and q_offset == kv_offset == 0 (whole packed "
              "rows)")
    if batch * q_len * max(q_heads, kv_heads) * (head_dim + _PAD_D) >= 2**31:
      return "packed cuDNN attention takes int32 element offsets: B*T*H*(D+8) must be < 2**31"
    if default_max_segments(batch, q_len, q_heads, head_dim) < 2:
      gib = packed_slot_bytes(batch, q_len, q_heads, head_dim) / 2**30
      return (f"packed cuDNN attention needs {gib:.1f} GiB per segment slot here, and "
              f"${PACKED_WORKSPACE_ENV} does not hold 2 slots")
  if q_heads % kv_heads:
    return f"query heads {q_heads} not a multiple of kv heads {kv_heads}"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"cuDNN flash attention needs bf16/fp16 q, k, v, got {jnp.dtype(dtype)}"
  if head_dim % 8 or head_dim > 256 - _PAD_D:
    return f"cuDNN head_dim must be a multiple of 8 and <= {256 - _PAD_D} here, got {head_dim}"
  plan = _plan(spec, q_len, kv_len, int(q_offset), int(kv_offset))
  return plan if isinstance(plan, str) else None


def why_unsupported(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                    kv_offset: int = 0, return_lse: bool = False, check_platform: bool = True
                    ) -> str | None:
  """``unsupported_reason`` from arrays (or ``jax.ShapeDtypeStruct``); usable inside jit.

  ``return_lse`` is always supported (fp32 stats, differentiable).
  """
  del return_lse
  if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
    return f"expected q [B,T,Hq,D] and k = v [B,T,Hkv,D], got {q.shape}, {k.shape}, {v.shape}"
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    return f"incompatible q {q.shape} and k {k.shape} (batch, head_dim)"
  if not q.dtype == k.dtype == v.dtype:
    return f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
  return unsupported_reason(
      spec, q_len=q.shape[1], kv_len=k.shape[1], q_heads=q.shape[2], kv_heads=k.shape[2],
      head_dim=q.shape[3], dtype=q.dtype, q_offset=q_offset, kv_offset=kv_offset,
      has_segment_ids=segment_ids is not None or kv_segment_ids is not None,
      check_platform=check_platform, batch=q.shape[0])


def supports(q, k, v, spec, **kwargs) -> bool:
  """True when ``cudnn_attention`` runs this call (see ``why_unsupported``)."""
  return why_unsupported(q, k, v, spec, **kwargs) is None


def registry_supports(platform: str, spec, shapes, dtype) -> str | None:
  """``supports`` for ``pallas_kernels.api.register_backend`` (shapes: ``api.AttentionShapes``)."""
  if platform != "gpu":
    return f"cuDNN needs a CUDA GPU (platform is {platform})"
  return unsupported_reason(
      spec, q_len=shapes.q_len, kv_len=shapes.kv_len, q_heads=shapes.q_heads,
      kv_heads=shapes.kv_heads, head_dim=shapes.head_dim, dtype=dtype, q_offset=shapes.q_offset,
      kv_offset=shapes.kv_offset, has_segment_ids=shapes.has_segment_ids, batch=shapes.batch)


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


# ----------------------------------------------------------------------------- the custom VJP
def _main_fwd(impl, q, k, v, *, scale, causal, window):
  if impl == "cudnn":
    return _cudnn_fwd(q, k, v, scale=scale, causal=causal, window=window)
  o, lse = _dense_fwd(q, k, v, _main_mask(q.shape[1], k.shape[1], causal, window), scale=scale)
  return o.astype(q.dtype), lse


def _main_bwd(impl, q, k, v, o, lse, do, dlse, *, scale, causal, window):
  if impl == "cudnn":
    return _cudnn_bwd(q, k, v, o, lse, do, dlse, scale=scale, causal=causal, window=window)
  mask = _main_mask(q.shape[1], k.shape[1], causal, window)
  return _dense_bwd(q, k, v, o, lse, do, dlse, mask, scale=scale)


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


def _forward(q, k, v, plan):
  impl, scale, causal, window, n_sink = plan
  out, lse = _main_fwd(impl, q, k, v, scale=scale, causal=causal, window=window)
  if n_sink:
    out, lse = _merge_sinks(q, k, v, out, lse, scale=scale, window=window, n_sink=n_sink)
  return out, lse


def _backward(q, k, v, out, lse, dout, dlse, plan):
  impl, scale, causal, window, n_sink = plan
  dq, dk, dv = _main_bwd(impl, q, k, v, out, lse, dout, dlse, scale=scale, causal=causal,
                         window=window)
  if n_sink:
    dq, dk, dv = _sinks_bwd(q, k, v, out, lse, dout, dlse, dq, dk, dv, scale=scale,
                            window=window, n_sink=n_sink)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attn_lse(q, k, v, plan):
  return _forward(q, k, v, plan)


def _attn_lse_fwd(q, k, v, plan):
  # Named residuals (attn_out / attn_lse): a remat policy saving them skips this forward.
  out, lse = tag_residuals(*_forward(q, k, v, plan))
  return (out, lse), (q, k, v, out, lse)


def _attn_lse_bwd(plan, res, g):
  q, k, v, out, lse = res
  dout, dlse = g
  return _backward(q, k, v, out, lse, dout, dlse, plan)


_attn_lse.defvjp(_attn_lse_fwd, _attn_lse_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attn(q, k, v, plan):
  return _forward(q, k, v, plan)[0]


def _attn_fwd(q, k, v, plan):
  # Named residuals (attn_out / attn_lse): a remat policy saving them skips this forward.
  out, lse = tag_residuals(*_forward(q, k, v, plan))
  return out, (q, k, v, out, lse)


def _attn_bwd(plan, res, dout):
  q, k, v, out, lse = res
  return _backward(q, k, v, out, lse, dout, None, plan)


_attn.defvjp(_attn_fwd, _attn_bwd)


# ----------------------------------------------------------------------------- packed documents
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
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


# Residuals keep the compact lse [B, H, T] (tagged like every backend's), never cuDNN's packed
# stats [B*M, H, T] (M times larger); the backward scatters it back.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _packed_attn_lse(q, k, v, seg, pk, plan):
  return _packed_forward(q, k, v, seg, pk, plan)


def _packed_attn_lse_fwd(q, k, v, seg, pk, plan):
  out, lse = tag_residuals(*_packed_forward(q, k, v, seg, pk, plan))
  return (out, lse), (q, k, v, seg, pk, out, lse)


def _packed_attn_lse_bwd(plan, res, g):
  q, k, v, seg, pk, out, lse = res
  dout, dlse = g
  return _packed_backward(q, k, v, seg, pk, out, lse, dout, dlse, plan)


_packed_attn_lse.defvjp(_packed_attn_lse_fwd, _packed_attn_lse_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _packed_attn(q, k, v, seg, pk, plan):
  return _packed_forward(q, k, v, seg, pk, plan)[0]


def _packed_attn_fwd(q, k, v, seg, pk, plan):
  out, lse = tag_residuals(*_packed_forward(q, k, v, seg, pk, plan))
  return out, (q, k, v, seg, pk, out, lse)


def _packed_attn_bwd(plan, res, dout):
  q, k, v, seg, pk, out, lse = res
  return _packed_backward(q, k, v, seg, pk, out, lse, dout, None, plan)


_packed_attn.defvjp(_packed_attn_fwd, _packed_attn_bwd)


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


# ----------------------------------------------------------------------------- public entry
@functools.partial(jax.jit, static_argnames=("spec", "q_offset", "kv_offset", "scale",
                                             "return_lse", "impl", "max_segments"))
def cudnn_attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                    kv_offset: int = 0, scale: float | None = None, return_lse: bool = False,
                    impl: str = "cudnn", max_segments: int | None = None):
  """Attention through cuDNN (contract of ``pallas_kernels.api.attention``, docs §2).

  Args:
    q: [B, Tq, Hq, D] bf16/fp16; k, v: [B, Tk, Hkv, D] same dtype, Hq % Hkv == 0.
    spec: ``full`` or ``sink_window`` AttentionSpec (or its string form).
    segment_ids, kv_segment_ids: optional int [B, T] packed-document ids (tokens attend only
      within their id). Need Tq == Tk and zero offsets; run through cuDNN's packed layout when
      every row has <= ``max_segments`` contiguous runs of ids and kv ids == q ids, else (decided
      at run time) through the Pallas Triton kernel (see the module docstring).
    q_offset, kv_offset: absolute positions of q[0] and k[0] (see module docstring).
    scale: logit scale, default ``D ** -0.5``.
    return_lse: also return lse [B, Hq, Tq] fp32 (natural log), differentiable.
    impl: ``"cudnn"`` (GPU) or ``"dense"`` (XLA stand-in with the same decomposition; tests).
    max_segments: static M, segments per row the packed path takes (>= 2); default
      ``default_max_segments()`` (``$LONGGEN_CUDNN_MAX_SEGMENTS`` or 64).

  Returns:
    out [B, Tq, Hq, D] in q.dtype, and lse when ``return_lse``.

  Raises:
    CudnnError: the call is outside what this path supports (message says why).
  """
  spec = as_spec(spec)
  if impl not in ("cudnn", "dense"):
    raise CudnnError(f"impl must be 'cudnn' or 'dense', got {impl!r}")
  problem = why_unsupported(q, k, v, spec, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                            q_offset=q_offset, kv_offset=kv_offset,
                            check_platform=impl == "cudnn")
  if problem and not (impl == "dense" and jnp.dtype(q.dtype) == jnp.float32
                      and "bf16/fp16" in problem):
    raise CudnnError(f"cudnn backend: {problem}")
  causal, window, n_sink = _plan(spec, q.shape[1], k.shape[1], int(q_offset), int(kv_offset))
  scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
  plan = (impl, scale, causal, window, n_sink)
  if segment_ids is not None:
    m = (default_max_segments(q.shape[0], q.shape[1], q.shape[2], q.shape[3])
         if max_segments is None else int(max_segments))
    if m < 2:
      raise CudnnError(f"cudnn backend: max_segments must be >= 2, got {m}")
    return _segmented(q, k, v, segment_ids, kv_segment_ids, spec, plan, return_lse, m)
  if kv_segment_ids is not None:
    raise CudnnError("cudnn backend: kv_segment_ids given without segment_ids")
  if return_lse:
    return _attn_lse(q, k, v, plan)
  return _attn(q, k, v, plan)


attention = cudnn_attention

__all__ = ["cudnn_attention", "attention", "supports", "why_unsupported", "unsupported_reason",
           "registry_supports", "default_max_segments", "REGISTRY_PRIORITY",
           "DEFAULT_MAX_SEGMENTS", "MAX_SEGMENTS_ENV", "CudnnError"]
