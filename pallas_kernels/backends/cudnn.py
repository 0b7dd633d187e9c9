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
(THD, ragged-offset) layout, both patterns: ``cudnn_packed.py`` (its docstring has the details;
needs cuDNN >= 9.6 and a Hopper or newer GPU). The pieces both paths share (the cuDNN
primitives, the widened backward, dense XLA attention, the sink merge) are in ``cudnn_common.py``.

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

import jax
import jax.numpy as jnp

from pallas_kernels.backends import _frame
from pallas_kernels.backends.cudnn_common import (_IMPORT_ERROR, _PAD_D, _cudnn_bwd, _cudnn_fwd,
                                                  _cudnn_version, _dense_bwd, _dense_fwd,
                                                  _main_mask, _merge_sinks, _sinks_bwd)
# Packed documents (segment ids) live in cudnn_packed.py; its public names are re-exported here.
from pallas_kernels.backends.cudnn_packed import (DEFAULT_MAX_SEGMENTS,
                                                  DEFAULT_PACKED_WORKSPACE_GIB, MAX_SEGMENTS_ENV,
                                                  PACKED_ENV, PACKED_WORKSPACE_ENV,
                                                  _packed_platform_problem, _segmented,
                                                  default_max_segments, packed_slot_bytes)
from pallas_kernels.spec import AttentionSpec, as_spec

# Suggested ``register_backend`` priority (docs/kernels.md, "cuDNN, jax-triton and dispatch
# measurements"): cuDNN first wherever it applies (full causal, sink_window).
REGISTRY_PRIORITY = 70


class CudnnError(ValueError):
  """The cudnn backend cannot run this call (one clear line)."""


# ----------------------------------------------------------------------------- support checks
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


def _frame_fwd(q, k, v, q_seg, kv_seg, plan):
  del q_seg, kv_seg  # the unsegmented path (packed rows: cudnn_packed)
  return _forward(q, k, v, plan)


def _frame_bwd(q, k, v, q_seg, kv_seg, out, lse, dout, dlse, plan):
  del q_seg, kv_seg
  return _backward(q, k, v, out, lse, dout, dlse, plan)


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
  return _frame.differentiable(_frame_fwd, _frame_bwd, return_lse)(q, k, v, None, None, plan)


attention = cudnn_attention

__all__ = ["cudnn_attention", "attention", "supports", "why_unsupported", "unsupported_reason",
           "registry_supports", "default_max_segments", "REGISTRY_PRIORITY",
           "DEFAULT_MAX_SEGMENTS", "MAX_SEGMENTS_ENV", "CudnnError"]
