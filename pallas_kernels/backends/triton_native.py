"""Native Triton block-sparse flash attention called through jax-triton (backend ``triton_native``).

A third GPU path next to ``pallas_gpu`` (Pallas lowered to Triton) and ``cudnn``: the same
kernels written directly in Triton and launched with ``jax_triton.triton_call``. It visits the
same block lists (``gpu_tables.kernel_tables``, built from the analytic block tables of
docs/architecture.md §3), so it skips exactly the blocks ``pallas_gpu`` skips and applies the
token predicate only on partial tiles. The predicate is the pattern's own ``visible``, compiled into
the kernels by ``triton_native_kernels.kernels_for`` (any registered pattern runs). Padding and the
custom VJP are ``_frame``'s.

* forward: grid (query block, batch x query head); an unmasked loop over the row's full tiles,
  then a masked loop over its partial ones; online softmax in fp32 with exp2; writes out and lse
  (natural log, ``-inf`` and a zero row for a query that sees nothing).
* backward (fwd + bwd delivered): delta = <dO, O> - dlse in XLA, a dQ kernel over the forward
  lists and a dK/dV kernel over the transposed lists that loops over the G query heads of its KV
  head (GQA reduced in registers, no atomics). Differentiable in q, k, v and through lse.
* segment ids (packed rows) are applied inside every visited tile; q_offset / kv_offset shift
  absolute positions as in the API contract.

Needs a CUDA GPU, ``triton`` and ``jax_triton`` (``pip install jax-triton``); when either is
missing ``why_unsupported`` says so and the dispatcher falls back. bf16/fp16 only; head_dim is
zero-padded to a power of two, lengths to a multiple of the largest tile.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._common import next_pow2
from pallas_kernels.backends import _frame
from pallas_kernels.backends.gpu_tables import kernel_tables
from pallas_kernels.spec import as_spec

# The kernels themselves (Triton source, defined when triton imports).
from pallas_kernels.backends import triton_native_kernels as _kernels
from pallas_kernels.backends.triton_native_kernels import triton

try:  # jax_triton raises ImportError on a jax without GPU support
  import jax_triton as jt
  _IMPORT_ERROR = None if triton is not None else "triton_native needs triton (pip install triton)"
except Exception as e:  # pylint: disable=broad-except
  jt = None
  _IMPORT_ERROR = (f"triton_native needs jax_triton (pip install jax-triton): "
                   f"{type(e).__name__}: {str(e).splitlines()[0]}")

_LOG2E = 1.4426950408889634
# Suggested ``register_backend`` priority (docs/kernels.md, "cuDNN, jax-triton and dispatch
# measurements"): below pallas_gpu (50, measured faster on the H100) and cudnn (70), above xla:
# the GPU fallback should Pallas' Triton lowering (deprecated in jax 0.11) go away.
REGISTRY_PRIORITY = 40
class TritonNativeError(ValueError):
  """The triton_native backend cannot run this call (one clear line)."""


@dataclasses.dataclass(frozen=True)
class NativeConfig:
  """Tiles (powers of two >= 16) and launch parameters of the three kernels."""

  block_q: int = 128
  block_k: int = 128
  num_warps: int = 8
  num_stages: int = 3
  block_q_dq: int = 128
  block_k_dq: int = 64
  block_q_dkv: int = 64
  block_k_dkv: int = 128
  num_warps_bwd: int = 8
  num_stages_bwd: int = 2

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name.startswith("block") and (not isinstance(v, int) or v < 16 or v & (v - 1)):
        raise TritonNativeError(f"NativeConfig.{f.name} must be a power of two >= 16, got {v!r}")
      if f.name.startswith("num") and (not isinstance(v, int) or v < 1):
        raise TritonNativeError(f"NativeConfig.{f.name} must be an int >= 1, got {v!r}")
    # Every padded row/column must be written by the kernel that owns it (no garbage in lse).
    if self.block_q < max(self.block_q_dq, self.block_q_dkv):
      raise TritonNativeError("NativeConfig.block_q must be >= block_q_dq and block_q_dkv")
    if self.block_k_dkv < max(self.block_k, self.block_k_dq):
      raise TritonNativeError("NativeConfig.block_k_dkv must be >= block_k and block_k_dq")


DEFAULT_CONFIG = NativeConfig()


# ----------------------------------------------------------------------------- host side
# The static argument is a ``_frame.Problem`` whose tiles are the padding steps and whose options
# hold the ``NativeConfig`` (``"config"``).
def _pattern_params(prob: _frame.Problem, hq: int, hkv: int, d: int, tab_w: int, bm: int, bn: int,
                    has_seg: bool):
  return dict(SCALE=prob.scale, TQ=prob.n_q * prob.block_q, TK=prob.n_kv * prob.block_k,
              TK_REAL=prob.kv_len, HQ=hq, HKV=hkv, D=d, TAB_W=tab_w, BLOCK_M=bm, BLOCK_N=bn,
              HAS_SEG=has_seg, Q_OFF=prob.q_offset, KV_OFF=prob.kv_offset)


def _table(prob: _frame.Problem, bq: int, bk: int, direction: str):
  t = kernel_tables(prob.spec, prob.q_len, prob.kv_len, bq, bk, prob.q_offset, prob.kv_offset)
  return np.ascontiguousarray(t.fwd if direction == "fwd" else t.bwd, np.int32)


def _segs(qseg, kseg):
  if qseg is not None:
    return qseg, kseg
  dummy = jnp.zeros((1,), jnp.int32)
  return dummy, dummy


def _fwd(q, k, v, qseg, kseg, prob: _frame.Problem):
  """Padded-array forward for ``_frame``: (out, lse natural)."""
  B, tq, hq, d = q.shape
  hkv = k.shape[2]
  c = prob.option("config")
  fwd_kernel, _, _ = _kernels.kernels_for(prob.spec)
  tab = _table(prob, c.block_q, c.block_k, "fwd")
  has_seg = qseg is not None
  qseg, kseg = _segs(qseg, kseg)
  out, lse = jt.triton_call(
      q, k, v, qseg, kseg, jnp.asarray(tab), kernel=fwd_kernel,
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, hq, tq), jnp.float32)],
      grid=(tab.shape[0], B * hq), num_warps=c.num_warps, num_stages=c.num_stages,
      **_pattern_params(prob, hq, hkv, d, tab.shape[1], c.block_q, c.block_k, has_seg))
  return out, lse


def _bwd(q, k, v, qseg, kseg, out, lse, dout, dlse, prob: _frame.Problem):
  """dQ and dK/dV kernels (lse in the log2 domain, ``+inf`` on rows that see nothing)."""
  B, tq, hq, d = q.shape
  hkv = k.shape[2]
  c = prob.option("config")
  _, dq_kernel, dkv_kernel = _kernels.kernels_for(prob.spec)
  lse_b, delta = _frame.bwd_row_stats(out, lse, dout, dlse)
  lse2 = lse_b * _LOG2E
  has_seg = qseg is not None
  qseg, kseg = _segs(qseg, kseg)
  tab_q = _table(prob, c.block_q_dq, c.block_k_dq, "fwd")
  dq = jt.triton_call(
      q, k, v, qseg, kseg, jnp.asarray(tab_q), dout, lse2, delta, kernel=dq_kernel,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), grid=(tab_q.shape[0], B * hq),
      num_warps=c.num_warps_bwd, num_stages=c.num_stages_bwd,
      **_pattern_params(prob, hq, hkv, d, tab_q.shape[1], c.block_q_dq, c.block_k_dq, has_seg))
  tab_k = _table(prob, c.block_q_dkv, c.block_k_dkv, "bwd")
  dk, dv = jt.triton_call(
      q, k, v, qseg, kseg, jnp.asarray(tab_k), dout, lse2, delta, kernel=dkv_kernel,
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      grid=(tab_k.shape[0], B * hkv), num_warps=c.num_warps_bwd, num_stages=c.num_stages_bwd,
      **_pattern_params(prob, hq, hkv, d, tab_k.shape[1], c.block_q_dkv, c.block_k_dkv, has_seg))
  return dq, dk, dv


# ----------------------------------------------------------------------------- public entry
def unsupported_reason(*, q_heads: int, kv_heads: int, head_dim: int, dtype,
                       check_platform: bool = True) -> str | None:
  """None when ``native_attention`` runs a call with these static facts, else a one-line reason.

  Every pattern, offset, length and segment-id combination of the API contract is supported.
  """
  if check_platform:
    if _IMPORT_ERROR:
      return _IMPORT_ERROR
    if jax.default_backend() != "gpu":
      return f"triton_native needs a CUDA GPU (jax.default_backend()={jax.default_backend()!r})"
  if q_heads % kv_heads:
    return f"query heads {q_heads} not a multiple of kv heads {kv_heads}"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"triton_native needs bf16/fp16 q, k, v, got {jnp.dtype(dtype)}"
  if head_dim > 256:
    return f"triton_native supports head_dim <= 256, got {head_dim}"
  return None


def why_unsupported(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                    kv_offset: int = 0, return_lse: bool = False, check_platform: bool = True
                    ) -> str | None:
  """Why the call cannot run here, or None: the ``attention(...)`` argument checks
  (``_frame.check_inputs``), then ``unsupported_reason``. Takes arrays or
  ``jax.ShapeDtypeStruct``; usable inside jit."""
  del spec, return_lse
  try:
    _frame.check_inputs(q, k, v, segment_ids, kv_segment_ids, q_offset, kv_offset)
  except ValueError as e:
    return str(e)
  return unsupported_reason(q_heads=q.shape[2], kv_heads=k.shape[2], head_dim=q.shape[3],
                            dtype=q.dtype, check_platform=check_platform)


def supports(q, k, v, spec, **kwargs) -> bool:
  return why_unsupported(q, k, v, spec, **kwargs) is None


def registry_supports(platform: str, spec, shapes, dtype) -> str | None:
  """``supports`` for ``pallas_kernels.api.register_backend`` (shapes: ``api.AttentionShapes``)."""
  if platform != "gpu":
    return f"triton_native needs a CUDA GPU (platform is {platform})"
  del spec
  return unsupported_reason(q_heads=shapes.q_heads, kv_heads=shapes.kv_heads,
                            head_dim=shapes.head_dim, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("spec", "q_offset", "kv_offset", "scale",
                                             "return_lse", "config"))
def native_attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                     kv_offset: int = 0, scale: float | None = None, return_lse: bool = False,
                     config: NativeConfig | None = None):
  """Block-sparse attention with native Triton kernels (contract of ``api.attention``, §2).

  Args: as ``pallas_kernels.api.attention``; ``config`` sets tiles and launch parameters.
  Returns: out [B, Tq, Hq, D] (q.dtype), and lse [B, Hq, Tq] fp32 when ``return_lse``.
  Raises: TritonNativeError when the call cannot run here (see ``why_unsupported``).
  """
  spec = as_spec(spec)
  try:
    kv_segment_ids = _frame.check_inputs(q, k, v, segment_ids, kv_segment_ids, q_offset,
                                         kv_offset, scale)
  except ValueError as e:
    raise TritonNativeError(f"triton_native backend: {e}") from None
  problem = unsupported_reason(q_heads=q.shape[2], kv_heads=k.shape[2], head_dim=q.shape[3],
                               dtype=q.dtype)
  if problem:
    raise TritonNativeError(f"triton_native backend: {problem}")
  cfg = config or DEFAULT_CONFIG
  step_q = max(cfg.block_q, cfg.block_q_dq, cfg.block_q_dkv)
  step_k = max(cfg.block_k, cfg.block_k_dq, cfg.block_k_dkv)
  prob = _frame.make_problem(spec, q, k, q_offset=q_offset, kv_offset=kv_offset, scale=scale,
                             block_q=step_q, block_k=step_k, options=(("config", cfg),))
  d = q.shape[3]
  return _frame.run_padded(_fwd, _bwd, prob, q, k, v, segment_ids, kv_segment_ids, return_lse,
                           tq_pad=prob.n_q * step_q, tk_pad=prob.n_kv * step_k,
                           d_pad=max(16, next_pow2(d)))


attention = native_attention

__all__ = ["native_attention", "attention", "supports", "why_unsupported", "unsupported_reason",
           "registry_supports", "NativeConfig", "DEFAULT_CONFIG", "REGISTRY_PRIORITY",
           "TritonNativeError"]
