"""Shared frame of the attention backends: input checks, the static problem, padding, the custom VJP.

A backend supplies two functions working on *padded* arrays and a hashable static argument
(a ``Problem`` for the blocked backends, any hashable plan otherwise):

  fwd(q, k, v, q_seg, kv_seg, static) -> out [B, Tq_pad, Hq, D] (q.dtype), lse [B, Hq, Tq_pad]
      fp32, natural log, ``-inf`` for a row that sees nothing
  bwd(q, k, v, q_seg, kv_seg, out, lse, d_out, d_lse, static) -> dq, dk, dv
      (``d_lse`` is None when the caller did not ask for lse)

``q_seg`` / ``kv_seg`` are integer side inputs (segment ids, or any pytree of integer arrays such
as cuDNN's packing; None when absent): they get no cotangent.

``differentiable`` wraps the pair in one ``jax.custom_vjp`` per backend (the lse output is
differentiable too: ring attention merges partial results by lse); its forward rule tags the
residual out / lse ``attn_out`` / ``attn_lse`` (``_common.tag_residuals``), after an optimization
barrier on the kernel's outputs (XLA:GPU cloned unbarriered custom calls). ``run_padded`` pads the
lengths (and optionally head_dim) to what the kernels need, runs it and slices the padding off;
``run_blocked`` is ``run_padded`` at whole ``Problem`` tiles. Padded keys and queries are masked
through the block tables' ``partial`` flags (padded query rows get a zero cotangent, so they add
nothing to dK / dV). Used by every backend: xla, pallas_tpu, pallas_gpu, triton_native, cudnn.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._common import FLOAT_DTYPES, cdiv, default_tile, is_pow2, tag_residuals
from pallas_kernels.spec import AttentionSpec


@dataclasses.dataclass(frozen=True)
class Problem:
  """Static description of one blocked attention call (hashable: a jit / custom_vjp static arg)."""

  spec: AttentionSpec
  q_len: int          # real (unpadded) lengths
  kv_len: int
  block_q: int
  block_k: int
  q_offset: int
  kv_offset: int
  scale: float
  options: tuple = ()  # backend specific static options, as sorted (name, value) pairs

  @property
  def n_q(self) -> int:
    return cdiv(self.q_len, self.block_q)

  @property
  def n_kv(self) -> int:
    return cdiv(self.kv_len, self.block_k)

  def option(self, name, default=None):
    return dict(self.options).get(name, default)


def check_inputs(q, k, v, segment_ids=None, kv_segment_ids=None, q_offset=0, kv_offset=0,
                 scale=None):
  """Validates the attention(...) arguments (one-line ValueErrors); returns the kv segment ids."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [B, T, H, D]; got ranks {q.ndim}, {k.ndim}, {v.ndim}")
  B, _, Hq, D = q.shape
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape; got {k.shape} and {v.shape}")
  if k.shape[0] != B or k.shape[3] != D:
    raise ValueError(f"k/v {k.shape} do not match q {q.shape} in batch or head_dim")
  if min(q.shape[1], k.shape[1]) < 1 or min(Hq, k.shape[2], D) < 1:
    raise ValueError(f"empty attention inputs: q {q.shape}, k {k.shape}")
  if Hq % k.shape[2]:
    raise ValueError(f"query heads {Hq} are not a multiple of kv heads {k.shape[2]}")
  for name, x in (("q", q), ("k", k), ("v", v)):
    if jnp.dtype(x.dtype).name not in FLOAT_DTYPES:
      raise ValueError(f"{name} dtype {x.dtype} is not one of {FLOAT_DTYPES}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
  for name, off in (("q_offset", q_offset), ("kv_offset", kv_offset)):
    if not isinstance(off, (int, np.integer)) or off < 0:
      raise ValueError(f"{name} must be a static non-negative int, got {off!r}")
  if scale is not None and not isinstance(scale, (int, float, np.floating)):
    raise ValueError(f"scale must be a static Python float or None, got {type(scale).__name__}")
  if segment_ids is None:
    if kv_segment_ids is not None:
      raise ValueError("kv_segment_ids given without segment_ids")
    return None
  kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
  check_segment_ids(B, ("segment_ids", segment_ids, q.shape[1]),
                    ("kv_segment_ids", kv_segment_ids, k.shape[1]))
  return kv_segment_ids


def check_segment_ids(batch: int, *named):
  """One-line ValueErrors for segment ids: each ``(name, ids, length)`` must be integers of
  shape ``(batch, length)``."""
  for name, s, t in named:
    if tuple(s.shape) != (batch, t):
      raise ValueError(f"{name} must have shape {(batch, t)}, got {tuple(s.shape)}")
    if not jnp.issubdtype(s.dtype, jnp.integer):
      raise ValueError(f"{name} must be integers, got {s.dtype}")


def make_problem(spec, q, k, *, q_offset, kv_offset, scale, block_q=None, block_k=None,
                 min_tile=8, options=()) -> Problem:
  """Picks the tiles (default: ``spec.block``, shrunk to the next power of two for short inputs)."""
  Tq, Tk, D = q.shape[1], k.shape[1], q.shape[3]
  bq = default_tile(spec.block, Tq, min_tile) if block_q is None else block_q
  bk = default_tile(spec.block, Tk, min_tile) if block_k is None else block_k
  for name, b in (("block_q", bq), ("block_k", bk)):
    if not is_pow2(b):
      raise ValueError(f"{name} must be a power of two, got {b!r}")
  scale = float(D ** -0.5 if scale is None else scale)
  return Problem(spec, Tq, Tk, int(bq), int(bk), int(q_offset), int(kv_offset), scale,
                 tuple(sorted(dict(options).items())))


def run_blocked(fwd: Callable, bwd: Callable, prob: Problem, q, k, v, q_seg, kv_seg,
                return_lse: bool):
  """``run_padded`` with the lengths padded to whole ``prob`` tiles."""
  return run_padded(fwd, bwd, prob, q, k, v, q_seg, kv_seg, return_lse,
                    tq_pad=prob.n_q * prob.block_q, tk_pad=prob.n_kv * prob.block_k)


def run_padded(fwd: Callable, bwd: Callable, static, q, k, v, q_seg, kv_seg, return_lse: bool, *,
               tq_pad: int, tk_pad: int, d_pad: int | None = None):
  """Zero-pads q to ``tq_pad`` rows, k / v to ``tk_pad`` (and head_dim to ``d_pad``), runs
  ``differentiable(fwd, bwd)`` and slices the padding off: out [B, Tq, Hq, D] (+ lse
  [B, Hq, Tq])."""
  tq, d = q.shape[1], q.shape[3]
  q = pad_axis(q, tq_pad, 1)
  k, v = pad_axis(k, tk_pad, 1), pad_axis(v, tk_pad, 1)
  if d_pad is not None:
    q, k, v = (pad_axis(x, d_pad, 3) for x in (q, k, v))
  if q_seg is not None:
    q_seg = pad_axis(q_seg.astype(jnp.int32), tq_pad, 1)
    kv_seg = pad_axis(kv_seg.astype(jnp.int32), tk_pad, 1)
  res = differentiable(fwd, bwd, return_lse)(q, k, v, q_seg, kv_seg, static)
  out, lse = res if return_lse else (res, None)
  out = out[:, :tq, :, :d]
  return (out, lse[:, :, :tq]) if return_lse else out


def pad_axis(x, size, axis):
  """``x`` zero-padded at the end of ``axis`` to ``size``."""
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


@functools.lru_cache(maxsize=None)
def differentiable(fwd: Callable, bwd: Callable, with_lse: bool = True):
  """``attn(q, k, v, q_seg, kv_seg, static)`` -> ``(out, lse)`` (``with_lse``) or ``out``, under
  one ``custom_vjp``: a flash-style backward from the saved output and lse."""

  def kernel(q, k, v, q_seg, kv_seg, static):
    # The barrier keeps XLA:GPU's dynamic-slice fusion from cloning a kernel's custom call: in a
    # scanned layer whose out / lse are saved into the stacked residuals, it fused one copy of the
    # call with that dynamic-update-slice and kept another for the layer's output, so each forward
    # ran twice (FA4's callback and the Mosaic GPU kernels; jax 0.11.2, H100, docs/benchmarks.md
    # 2026-12-06). Costs one copy of out / lse into the stack.
    return jax.lax.optimization_barrier(tuple(fwd(q, k, v, q_seg, kv_seg, static)))

  def primal(q, k, v, q_seg, kv_seg, static):
    out, lse = kernel(q, k, v, q_seg, kv_seg, static)
    return (out, lse) if with_lse else out

  attn = jax.custom_vjp(primal, nondiff_argnums=(5,))

  def attn_fwd(q, k, v, q_seg, kv_seg, static):
    # Named residuals: a remat policy saving them skips this forward in the backward.
    out, lse = tag_residuals(*kernel(q, k, v, q_seg, kv_seg, static))
    return ((out, lse) if with_lse else out), (q, k, v, q_seg, kv_seg, out, lse)

  def attn_bwd(static, res, cts):
    q, k, v, q_seg, kv_seg, out, lse = res
    d_out, d_lse = cts if with_lse else (cts, None)
    dq, dk, dv = bwd(q, k, v, q_seg, kv_seg, out, lse, d_out, d_lse, static)
    return dq, dk, dv, _no_cotangent(q_seg), _no_cotangent(kv_seg)

  attn.defvjp(attn_fwd, attn_bwd)
  return attn


def _no_cotangent(x):
  """float0 zeros for integer side inputs (any pytree of arrays, or None)."""
  return jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0), x)


def bwd_row_stats(out, lse, d_out, d_lse):
  """Per-row backward statistics, [B, Hq, T] fp32 each.

  ``d_lse`` may be None (no lse cotangent). ``lse_b``: lse with ``-inf`` (rows that see
  nothing) replaced by ``+inf`` so ``exp(s - lse_b) == 0`` there without a guard.
  ``delta = rowsum(dO * O) - d_lse`` (0 on empty rows): ``dS = P * (dP - delta)`` then also
  carries the lse cotangent (``d lse / d s = P``).
  """
  delta = jnp.einsum("bthd,bthd->bht", d_out.astype(jnp.float32), out.astype(jnp.float32))
  seen = jnp.isfinite(lse)
  if d_lse is not None:
    delta = delta - d_lse.astype(jnp.float32)
  delta = jnp.where(seen, delta, 0.0)
  return jnp.where(seen, lse, jnp.inf), delta


def token_mask(prob: Problem, q_blk, k_blk, xp=jnp):
  """Token-level visibility of tiles ``(q_blk[n], k_blk[n])``: bool ``[n, block_q, block_k]``.

  Applies the pattern (``spec.allowed``) and masks the padding of ragged tails.
  """
  bq, bk = prob.block_q, prob.block_k
  q_row = q_blk[:, None] * bq + xp.arange(bq, dtype=xp.int32)[None, :]
  k_row = k_blk[:, None] * bk + xp.arange(bk, dtype=xp.int32)[None, :]
  qpos = (q_row + prob.q_offset)[:, :, None]
  kpos = (k_row + prob.kv_offset)[:, None, :]
  m = prob.spec.allowed(qpos, kpos, xp=xp)
  return m & (q_row < prob.q_len)[:, :, None] & (k_row < prob.kv_len)[:, None, :]
