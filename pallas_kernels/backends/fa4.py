"""FlashAttention-4 (CuTe DSL, ``flash_attn.cute``) as an attention backend: ``fa4``.

Optional: ``pip install 'longgen_jax[fa4]'`` (flash-attn-4 and the CUTLASS DSL; they pull torch).
Where it is installed, ``auto`` takes it first for every call it runs (``unsupported_reason``);
``backend="fa4"`` (model configs: ``attention_backend="fa4"``) asks for it by name, and
``pallas_kernels.api.unregister_backend("fa4")`` keeps our kernels. Measured on an H100 it is the
fastest kernel per call (16K-128K, MHA and GQA, every pattern, forward and forward+backward; as
fast as FA4 driven from torch), and the 128K training step is 1.03-1.11x faster with it than with
our kernels (hybrid and full, one document and packed; docs/benchmarks.md, 2026-12-06). That needs
``_frame.differentiable``'s optimization barrier: without it XLA:GPU cloned the forward callback
and each layer's forward ran twice (``benchmarks/fa4_step_probe.py``).

How it runs. Each pattern is one FA4 call, the way FlexAttention's FLASH backend drives FA4:
* ``full``: FA4's own causal kernel;
* any other pattern (and packed rows): block sparsity from our analytic tables (``fa4_tables.py``:
  masked and full 128 x 128 blocks, forward and transposed) plus one ``mask_mod``,
  ``causal & pattern.visible`` traced by the CuTe DSL (the predicate uses operators only, so a new
  pattern needs no edit here).

The call is bound into XLA with ``jax.experimental.buffer_callback``: XLA hands the callback its
device buffers and its CUDA stream; the callback wraps them as torch tensors through DLPack (no
copies) and calls FA4's entry points (``_flash_attn_fwd`` / ``_flash_attn_bwd``, pinned to
flash-attn-4 4.0.0b36) on that stream, writing the outputs in place. What that implies:
* the first call of a shape compiles FA4's kernels (seconds each; FA4 caches them);
* FA4's scratch (fp32 dQ accumulators, ~B*H*T*D*4 bytes in the backward) comes from torch's
  allocator, outside XLA's pool: leave room for it (``XLA_PYTHON_CLIENT_MEM_FRACTION``);
* XLA does not capture the call in CUDA graphs; each call costs a Python dispatch (~0.1 ms).

Contract: ``pallas_kernels.api.attention`` (out, lse fp32 natural log, differentiable in q, k, v
and through lse) under one ``custom_vjp`` with the named residuals. Packed rows (segment ids): the
block lists are built per batch row in XLA (``gpu_tables.segment_visits``: tiles across documents
dropped, tiles straddling a boundary masked) and the ``mask_mod`` also compares the ids (FA4
``aux_tensors``). Supported (``unsupported_reason`` says what is not): bf16/fp16, Tq == Tk, no
offsets, head_dim a multiple of 16 up to 128, a CUDA GPU of compute capability 9.x (the only one it
was tested on).

``impl="emulate"`` swaps FA4 for a dense torch computation of exactly what the FA4 call is given
(the block lists, the mask on masked blocks only): the CPU tests check the tables, the buffer
plumbing and the custom gradient with it.
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.backends import _frame, gpu_tables
from pallas_kernels.backends.fa4_tables import BLOCK, SparseArrays, sparse_arrays, token_mask
from pallas_kernels.spec import AttentionSpec, as_spec

FA4_VERSION = "4.0.0b36"
_LOCK = threading.Lock()    # FA4's compile cache and torch's current-stream state are global


class Fa4Error(ValueError):
  """The fa4 backend cannot run this call (one clear line)."""


class _Plan(NamedTuple):
  spec: AttentionSpec
  scale: float
  impl: str
  packed: bool     # segment ids: per-row block lists and a mask_mod reading the ids

  @property
  def native_causal(self) -> bool:
    """FA4's own causal kernel (no block sparsity): full attention over one document."""
    return self.spec.pattern.only_causal and not self.packed


# ----------------------------------------------------------------------------- support checks
@functools.lru_cache(maxsize=1)
def _import_problem() -> str | None:
  try:
    import flash_attn.cute.interface  # noqa: F401  pylint: disable=g-import-not-at-top
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except  (any import failure: not installed)
    return (f"flash-attn-4 is not importable ({type(e).__name__}: {str(e)[:120]}); "
            "pip install 'longgen_jax[fa4]'")
  return None


@functools.lru_cache(maxsize=1)
def _platform_problem() -> str | None:
  if jax.default_backend() != "gpu":
    return f"FA4 needs a CUDA GPU (jax.default_backend()={jax.default_backend()!r})"
  cc = str(getattr(jax.devices()[0], "compute_capability", "0"))
  if not cc.startswith("9."):
    return f"the fa4 backend is built and tested for compute capability 9.x (Hopper), not {cc}"
  return _import_problem()


def unsupported_reason(spec, *, q_len: int, kv_len: int, q_heads: int, kv_heads: int,
                       head_dim: int, dtype, q_offset: int = 0, kv_offset: int = 0,
                       has_segment_ids: bool = False, check_platform: bool = True,
                       emulate: bool = False) -> str | None:
  """None when ``fa4_attention`` runs a call with these static facts, else a one-line reason."""
  as_spec(spec)
  if check_platform:
    problem = _platform_problem()
    if problem:
      return problem
  if q_len != kv_len or q_offset or kv_offset:
    return "fa4 runs whole causal rows: Tq == Tk and q_offset == kv_offset == 0"
  if q_heads % kv_heads:
    return f"query heads {q_heads} not a multiple of kv heads {kv_heads}"
  if not emulate and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"FA4 needs bf16/fp16 q, k, v, got {jnp.dtype(dtype)}"
  if head_dim % 16 or not 16 <= head_dim <= 128:
    return f"fa4 here takes head_dim a multiple of 16 up to 128, got {head_dim}"
  return None


def registry_supports(platform: str, spec, shapes, dtype) -> str | None:
  """``supports`` for ``pallas_kernels.api.register_backend`` (shapes: ``api.AttentionShapes``)."""
  if platform != "gpu":
    return f"FA4 needs a CUDA GPU (platform is {platform})"
  return unsupported_reason(
      spec, q_len=shapes.q_len, kv_len=shapes.kv_len, q_heads=shapes.q_heads,
      kv_heads=shapes.kv_heads, head_dim=shapes.head_dim, dtype=dtype, q_offset=shapes.q_offset,
      kv_offset=shapes.kv_offset, has_segment_ids=shapes.has_segment_ids)


# ----------------------------------------------------------------------------- block lists (XLA)
def _static_lists(spec: AttentionSpec, seq_len: int, backward: bool):
  """One causal row's lists, int32 ``(mask_cnt, mask_idx, full_cnt, full_idx)``, shaped
  ``[1, 1, n]`` / ``[1, 1, n, w]`` (batch and heads broadcast by FA4)."""
  arrays = sparse_arrays(spec, seq_len)[int(backward)]
  return tuple(jnp.asarray(np.ascontiguousarray(a)[None, None]) for a in arrays)


def _packed_lists(spec: AttentionSpec, row_seg, entry_seg, backward: bool):
  """Per batch row: ``gpu_tables.segment_visits`` (tiles across documents dropped, tiles that
  straddle a boundary masked) rewritten as FA4's four arrays, ``[B, 1, n]`` / ``[B, 1, n, w]``."""
  L = row_seg.shape[1]
  kt = gpu_tables.kernel_tables(spec, L, L, BLOCK, BLOCK)
  rows = gpu_tables.segment_visits(kt.bwd if backward else kt.fwd, row_seg, entry_seg, BLOCK,
                                   BLOCK)                       # [B, n, 2 + w]
  n_full, n_all, blocks = rows[..., 0], rows[..., 1], rows[..., 2:]
  w = blocks.shape[-1]
  shifted = jnp.minimum(n_full[..., None] + jnp.arange(w), w - 1)
  mask_idx = jnp.take_along_axis(blocks, shifted, axis=-1)    # the partial entries come last
  return tuple(a[:, None].astype(jnp.int32) for a in (n_all - n_full, mask_idx, n_full, blocks))


def _pad_ids(seg):
  """Ids padded (edge) to whole 128-token blocks: the mask_mod reads them for every position of
  a tile, the tail tile's past-the-end ones included (FA4 masks those keys afterwards)."""
  L = seg.shape[1]
  return jnp.pad(seg.astype(jnp.int32), ((0, 0), (0, -L % BLOCK)), mode="edge")


def _extra_inputs(plan: _Plan, q_seg, kv_seg, seq_len: int, backward: bool) -> tuple:
  """What the callback passes to FA4 besides q, k, v (and out, dout, lse, dlse)."""
  if plan.native_causal:
    return ()
  if not plan.packed:
    return _static_lists(plan.spec, seq_len, backward)
  q_ids, kv_ids = _pad_ids(q_seg), _pad_ids(kv_seg)
  rows, entries = (kv_ids, q_ids) if backward else (q_ids, kv_ids)
  return _packed_lists(plan.spec, rows, entries, backward) + (q_ids, kv_ids)


# ----------------------------------------------------------------------------- torch side
@functools.lru_cache(maxsize=None)
def _mask_mod(spec: AttentionSpec, packed: bool):
  """FA4 ``mask_mod``: ``spec.allowed`` on CuTe values (compiled into the kernel); packed: and
  the same segment id (``aux_tensors``: q ids, kv ids, ``[B, T padded to 128]`` int32)."""
  import cutlass  # pylint: disable=g-import-not-at-top
  import cutlass.cute as cute  # pylint: disable=g-import-not-at-top
  from flash_attn.cute import utils  # pylint: disable=g-import-not-at-top
  pattern = spec.pattern

  def allowed(q_idx, kv_idx):
    if pattern.only_causal:
      return kv_idx <= q_idx
    return (kv_idx <= q_idx) & pattern.visible(q_idx, kv_idx, spec)

  if packed:
    @cute.jit
    def mask_mod(b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):  # noqa: ARG001
      b, qi, ki = (utils.ssa_to_scalar(x) for x in (b_idx, q_idx, kv_idx))
      same = aux_tensors[0][b, qi] == aux_tensors[1][b, ki]
      return allowed(q_idx, kv_idx) & utils.scalar_to_ssa(same, cutlass.Boolean)
  else:
    @cute.jit
    def mask_mod(b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):  # noqa: ARG001
      return allowed(q_idx, kv_idx)

  # FA4 keys its compile cache on this (else on the source and the closure).
  mask_mod.__cute_hash__ = f"longgen_jax:{spec}:{'packed' if packed else 'row'}"
  return mask_mod


def _fa4_kwargs(plan: _Plan, extra) -> dict:
  """FA4 keyword arguments for the pattern: causal, or block sparsity + mask_mod (+ aux ids)."""
  if plan.native_causal:
    return dict(causal=True)
  from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch  # noqa: PLC0415
  kw = dict(causal=False, mask_mod=_mask_mod(plan.spec, plan.packed),
            block_sparse_tensors=BlockSparseTensorsTorch(*extra[:4], block_size=(BLOCK, BLOCK)))
  if plan.packed:
    kw["aux_tensors"] = list(extra[4:6])
  return kw


def _torch(bufs):
  import torch  # pylint: disable=g-import-not-at-top
  return [None if b is None else torch.from_dlpack(b) for b in bufs]


def _on_stream(ctx, device):
  """Context: FA4's lock, and torch on XLA's stream (``ctx.stream``) and device."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  stack = contextlib.ExitStack()
  stack.enter_context(_LOCK)
  if device.type == "cuda":
    stack.enter_context(torch.cuda.device(device))
    stack.enter_context(torch.cuda.stream(torch.cuda.ExternalStream(ctx.stream, device=device)))
  return stack


def _fwd_callback(plan: _Plan, ctx, outs, q, k, v, *extra):
  o, lse = _torch(outs)
  q, k, v, *extra = _torch((q, k, v, *extra))
  with _on_stream(ctx, q.device):
    if plan.impl == "emulate":
      o_, lse_ = _emulate(plan, q, k, v, extra)
      o.copy_(o_.to(o.dtype))
      lse.copy_(lse_)
      return
    from flash_attn.cute.interface import _flash_attn_fwd  # pylint: disable=g-import-not-at-top
    _flash_attn_fwd(q, k, v, softmax_scale=plan.scale, return_lse=True, out=o, lse=lse,
                    **_fa4_kwargs(plan, extra))


def _bwd_callback(plan: _Plan, with_dlse: bool, ctx, outs, q, k, v, out, d_out, lse, *rest):
  dq, dk, dv = _torch(outs)
  q, k, v, out, d_out, lse, *rest = _torch((q, k, v, out, d_out, lse, *rest))
  d_lse, extra = (rest[0], rest[1:]) if with_dlse else (None, rest)
  with _on_stream(ctx, q.device):
    if plan.impl == "emulate":
      grads = _emulate_bwd(plan, q, k, v, d_out, d_lse, extra)
      for dst, g in zip((dq, dk, dv), grads):
        dst.copy_(g.to(dst.dtype))
      return
    from flash_attn.cute.interface import _flash_attn_bwd  # pylint: disable=g-import-not-at-top
    _flash_attn_bwd(q, k, v, out, d_out, lse, softmax_scale=plan.scale, dlse=d_lse,
                    dq=dq, dk=dk, dv=dv, **_fa4_kwargs(plan, extra))


def _emulated_mask(plan: _Plan, L: int, extra, backward: bool = False):
  """Bool ``[B or 1, L, L]``: the (query, key) pairs an FA4 call given ``extra`` computes (the
  listed blocks; ``mask_mod`` on the masked ones; keys past the end dropped)."""
  import torch  # pylint: disable=g-import-not-at-top
  pos = torch.arange(L)
  causal = pos[None, :] <= pos[:, None]
  if plan.native_causal:
    return causal[None]
  lists = [t.cpu().numpy() for t in extra[:4]]          # [B, 1, n] / [B, 1, n, w]
  allowed = (plan.spec.allowed(pos[:, None], pos[None, :]) & causal).numpy()
  masks = []
  for b in range(lists[0].shape[0]):
    row_allowed = allowed
    if plan.packed:
      q_ids, kv_ids = (t.cpu().numpy()[b, :L] for t in extra[4:6])
      row_allowed = allowed & (q_ids[:, None] == kv_ids[None, :])
    arrays = SparseArrays(*(a[b, 0] for a in lists))
    masks.append(token_mask(plan.spec, L, arrays, transposed=backward, allowed=row_allowed))
  return torch.from_numpy(np.stack(masks))


def _emulate(plan: _Plan, q, k, v, extra, backward: bool = False):
  """Dense torch attention over exactly the pairs ``_emulated_mask`` gives (fp32)."""
  import torch  # pylint: disable=g-import-not-at-top
  mask = _emulated_mask(plan, q.shape[1], extra, backward)[:, None].to(q.device)
  rep = q.shape[2] // k.shape[2]
  qf = q.float().transpose(1, 2)
  kf = k.float().repeat_interleave(rep, dim=2).transpose(1, 2)
  vf = v.float().repeat_interleave(rep, dim=2).transpose(1, 2)
  s = ((qf @ kf.transpose(-1, -2)) * plan.scale).masked_fill(~mask, float("-inf"))
  lse = torch.logsumexp(s, dim=-1)
  o = torch.softmax(s, dim=-1).nan_to_num(0.0) @ vf
  return o.transpose(1, 2), lse


def _emulate_bwd(plan: _Plan, q, k, v, d_out, d_lse, extra):
  """Gradients of the emulated call whose pairs come from the BACKWARD (transposed) lists."""
  import torch  # pylint: disable=g-import-not-at-top
  qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
  with torch.enable_grad():
    o, lse = _emulate(plan, qf, kf, vf, extra, backward=True)
    loss = (o * d_out.float()).sum()
    if d_lse is not None:
      loss = loss + (torch.where(torch.isfinite(lse), lse, 0.0) * d_lse.float()).sum()
    return torch.autograd.grad(loss, (qf, kf, vf))


# ----------------------------------------------------------------------------- the custom VJP
@functools.lru_cache(maxsize=None)
def _callbacks(plan: _Plan):
  return (functools.partial(_fwd_callback, plan), functools.partial(_bwd_callback, plan, True),
          functools.partial(_bwd_callback, plan, False))


def _like(x, dtype=None):
  return jax.ShapeDtypeStruct(x.shape, x.dtype if dtype is None else dtype)


def _fwd(q, k, v, q_seg, kv_seg, plan: _Plan):
  from jax.experimental.buffer_callback import buffer_callback  # noqa: PLC0415
  B, T, H, _ = q.shape
  extra = _extra_inputs(plan, q_seg, kv_seg, T, backward=False)
  shapes = (_like(q), jax.ShapeDtypeStruct((B, H, T), jnp.float32))
  # (``_frame.differentiable`` puts the outputs through an optimization barrier: unbarriered,
  # XLA:GPU cloned this callback and each forward ran twice.)
  return tuple(buffer_callback(_callbacks(plan)[0], shapes)(q, k, v, *extra))


def _bwd(q, k, v, q_seg, kv_seg, out, lse, d_out, d_lse, plan: _Plan):
  from jax.experimental.buffer_callback import buffer_callback  # noqa: PLC0415
  extra = _extra_inputs(plan, q_seg, kv_seg, q.shape[1], backward=True)
  args = (q, k, v, out, d_out.astype(out.dtype), lse)
  if d_lse is not None:
    args += (jnp.where(jnp.isfinite(lse), d_lse.astype(jnp.float32), 0.0),)
  fn = _callbacks(plan)[1 if d_lse is not None else 2]
  return tuple(buffer_callback(fn, (_like(q), _like(k), _like(v)))(*args, *extra))


# ----------------------------------------------------------------------------- public entry
@functools.partial(jax.jit, static_argnames=("spec", "q_offset", "kv_offset", "scale",
                                             "return_lse", "impl"))
def fa4_attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                  kv_offset: int = 0, scale: float | None = None, return_lse: bool = False,
                  impl: str = "fa4"):
  """Attention through FlashAttention-4 (contract of ``pallas_kernels.api.attention``).

  Args:
    q: [B, T, Hq, D] bf16/fp16; k, v: [B, T, Hkv, D], Hq % Hkv == 0.
    spec: any registered pattern (AttentionSpec or its string form).
    segment_ids, kv_segment_ids: optional int [B, T] packed-document ids (kv ids default to the
      q ids): per-row block lists skip the tiles across documents, the mask_mod compares ids.
    q_offset, kv_offset: must be 0 (whole rows).
    scale: logit scale, default ``D ** -0.5``.
    return_lse: also return lse [B, Hq, T] fp32 (natural log), differentiable.
    impl: ``"fa4"`` (GPU) or ``"emulate"`` (dense torch stand-in given the same inputs; tests).

  Raises:
    Fa4Error: the call is outside what this backend supports (message says why).
  """
  spec = as_spec(spec)
  if impl not in ("fa4", "emulate"):
    raise Fa4Error(f"impl must be 'fa4' or 'emulate', got {impl!r}")
  problem = unsupported_reason(
      spec, q_len=q.shape[1], kv_len=k.shape[1], q_heads=q.shape[2], kv_heads=k.shape[2],
      head_dim=q.shape[3], dtype=q.dtype, q_offset=q_offset, kv_offset=kv_offset,
      has_segment_ids=segment_ids is not None or kv_segment_ids is not None,
      check_platform=impl == "fa4", emulate=impl == "emulate")
  if problem:
    raise Fa4Error(f"fa4 backend: {problem}")
  if not q.dtype == k.dtype == v.dtype:
    raise Fa4Error(
        f"fa4 backend: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
  packed = segment_ids is not None
  if kv_segment_ids is not None and not packed:
    raise Fa4Error("fa4 backend: kv_segment_ids given without segment_ids")
  if packed:
    kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    _frame.check_segment_ids(q.shape[0], ("segment_ids", segment_ids, q.shape[1]),
                             ("kv_segment_ids", kv_segment_ids, k.shape[1]))
  plan = _Plan(spec, float(q.shape[-1] ** -0.5 if scale is None else scale), impl, packed)
  return _frame.differentiable(_fwd, _bwd, return_lse)(q, k, v, segment_ids, kv_segment_ids,
                                                         plan)


attention = fa4_attention

__all__ = ["fa4_attention", "attention", "unsupported_reason", "registry_supports", "Fa4Error",
           "FA4_VERSION"]
