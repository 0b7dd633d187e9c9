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

Not supported (``why_unsupported`` says which, the dispatcher falls back): segment ids (cuDNN
packs documents only through its THD layout with per-segment offsets, not wired here), the
``strided`` pattern, offsets other than the two ``full`` cases above, non-zero offsets for
``sink_window``, dtypes other than bf16/fp16, head_dim not a multiple of 8 or > 248 (room for the
widening), and any platform but CUDA.

``impl="dense"`` swaps the cuDNN calls for dense XLA attention with the same masks: it is what the
CPU tests use to check the decomposition, the merge and the custom gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import lse_merge
from pallas_kernels.spec import AttentionSpec, as_spec

NEG_INF = float("-inf")
_PAD_D = 8  # head-dim widening that carries an lse cotangent through cuDNN's backward
# Suggested ``register_backend`` priority (docs/kernels.md, "cuDNN, jax-triton and dispatch
# measurements"): cuDNN first wherever it applies (full causal, sink_window).
REGISTRY_PRIORITY = 70

try:  # private: the primitives behind jax.nn.dot_product_attention(implementation="cudnn")
  from jax._src.cudnn import fused_attention_stablehlo as _fa
  _FWD_P = _fa._dot_product_attention_fwd_p_wrapper  # pylint: disable=protected-access
  _BWD_P = _fa._dot_product_attention_bwd_p_wrapper  # pylint: disable=protected-access
  _MASK_CAUSAL, _MASK_NONE = _fa.MaskType.CAUSAL, _fa.MaskType.NO_MASK
  _LAYOUT = _fa.AttentionLayout.BTNH.value
  _IMPORT_ERROR = None
except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the jax build
  _fa = None
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
                       has_segment_ids: bool = False, check_platform: bool = True) -> str | None:
  """None when ``cudnn_attention`` runs a call with these static facts, else a one-line reason."""
  spec = as_spec(spec)
  if check_platform:
    problem = _platform_problem()
    if problem:
      return problem
  if has_segment_ids:
    return "the cuDNN path takes no segment ids (packed rows: use pallas_gpu or xla)"
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
      check_platform=check_platform)


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
      kv_offset=shapes.kv_offset, has_segment_ids=shapes.has_segment_ids)


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


def _cudnn_bwd(q, k, v, o, lse, do, dlse, *, scale, causal, window):
  """(dq, dk, dv) of this part given the merged (o, lse), dO and optional dlse."""
  plain = functools.partial(_cudnn_bwd_plain, scale=scale, causal=causal, window=window)
  do = do.astype(q.dtype)
  if dlse is None:
    return plain(q, k, v, o, lse, do)
  return jax.lax.cond(jnp.any(dlse != 0), lambda a: _widened_bwd(plain, *a),
                      lambda a: plain(*a[:-1]), (q, k, v, o, lse, do, dlse.astype(jnp.float32)))


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


def _forward(q, k, v, plan):
  impl, scale, causal, window, n_sink = plan
  out, lse = _main_fwd(impl, q, k, v, scale=scale, causal=causal, window=window)
  if n_sink:
    # Query rows i < W see no sink outside their window (j <= i - W < 0): only rows [W, T).
    r0, t = window, q.shape[1]
    o_s, l_s = _dense_fwd(q[:, r0:], k[:, :n_sink], v[:, :n_sink],
                          _sink_mask(r0, t, n_sink, window), scale=scale)
    o_m, l_m = lse_merge.merge_forward([out[:, r0:], o_s], [lse[..., r0:], l_s],
                                       out_dtype=q.dtype)
    out = out.at[:, r0:].set(o_m)
    lse = lse.at[..., r0:].set(l_m)
  return out, lse


def _backward(q, k, v, out, lse, dout, dlse, plan):
  impl, scale, causal, window, n_sink = plan
  dq, dk, dv = _main_bwd(impl, q, k, v, out, lse, dout, dlse, scale=scale, causal=causal,
                         window=window)
  if n_sink:
    r0, t = window, q.shape[1]
    dq_s, dk_s, dv_s = _dense_bwd(q[:, r0:], k[:, :n_sink], v[:, :n_sink], out[:, r0:],
                                  lse[..., r0:], dout[:, r0:],
                                  None if dlse is None else dlse[..., r0:],
                                  _sink_mask(r0, t, n_sink, window), scale=scale)
    dq = _add_rows(dq, r0, 1, dq_s)
    dk = _add_rows(dk, 0, 1, dk_s)
    dv = _add_rows(dv, 0, 1, dv_s)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attn_lse(q, k, v, plan):
  return _forward(q, k, v, plan)


def _attn_lse_fwd(q, k, v, plan):
  out, lse = _forward(q, k, v, plan)
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
  out, lse = _forward(q, k, v, plan)
  return out, (q, k, v, out, lse)


def _attn_bwd(plan, res, dout):
  q, k, v, out, lse = res
  return _backward(q, k, v, out, lse, dout, None, plan)


_attn.defvjp(_attn_fwd, _attn_bwd)


# ----------------------------------------------------------------------------- public entry
@functools.partial(jax.jit, static_argnames=("spec", "q_offset", "kv_offset", "scale",
                                             "return_lse", "impl"))
def cudnn_attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                    kv_offset: int = 0, scale: float | None = None, return_lse: bool = False,
                    impl: str = "cudnn"):
  """Attention through cuDNN (contract of ``pallas_kernels.api.attention``, docs §2).

  Args:
    q: [B, Tq, Hq, D] bf16/fp16; k, v: [B, Tk, Hkv, D] same dtype, Hq % Hkv == 0.
    spec: ``full`` or ``sink_window`` AttentionSpec (or its string form).
    segment_ids, kv_segment_ids: must be None (see ``why_unsupported``).
    q_offset, kv_offset: absolute positions of q[0] and k[0] (see module docstring).
    scale: logit scale, default ``D ** -0.5``.
    return_lse: also return lse [B, Hq, Tq] fp32 (natural log), differentiable.
    impl: ``"cudnn"`` (GPU) or ``"dense"`` (XLA stand-in with the same decomposition; tests).

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
  if return_lse:
    return _attn_lse(q, k, v, plan)
  return _attn(q, k, v, plan)


attention = cudnn_attention

__all__ = ["cudnn_attention", "attention", "supports", "why_unsupported", "unsupported_reason",
           "registry_supports", "REGISTRY_PRIORITY", "CudnnError"]
