"""Shared frame of the blocked kernels: input checks, padding, the custom VJP, token masks.

A blocked backend supplies two functions working on *padded* arrays (lengths multiples of the
tiles) and a static ``Problem``:

  fwd(q, k, v, q_seg, kv_seg, prob) -> out [B, Tq_pad, Hq, D] (q.dtype), lse [B, Hq, Tq_pad] fp32
  bwd(q, k, v, q_seg, kv_seg, out, lse, d_out, d_lse, prob) -> dq, dk, dv

``run_blocked`` checks and pads the inputs, calls them through one ``jax.custom_vjp`` (so the lse
output is differentiable too: ring attention merges partial results by lse) and slices the padding
off. Padded keys and queries are masked through the block tables' ``partial`` flags. The forward
rule tags its residual out / lse ``attn_out`` / ``attn_lse`` (``_common.tag_residuals``).
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
  for name, s, t in (("segment_ids", segment_ids, q.shape[1]),
                     ("kv_segment_ids", kv_segment_ids, k.shape[1])):
    if tuple(s.shape) != (B, t):
      raise ValueError(f"{name} must have shape {(B, t)}, got {tuple(s.shape)}")
    if not jnp.issubdtype(s.dtype, jnp.integer):
      raise ValueError(f"{name} must be integers, got {s.dtype}")
  return kv_segment_ids


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
  """Pads to whole tiles, runs ``fwd`` under the shared custom VJP, slices the padding off."""
  tq, tk = prob.n_q * prob.block_q, prob.n_kv * prob.block_k
  q = _pad_axis(q, tq, 1)
  k, v = _pad_axis(k, tk, 1), _pad_axis(v, tk, 1)
  if q_seg is not None:
    q_seg = _pad_axis(q_seg.astype(jnp.int32), tq, 1)
    kv_seg = _pad_axis(kv_seg.astype(jnp.int32), tk, 1)
  out, lse = _vjp_for(fwd, bwd)(q, k, v, q_seg, kv_seg, prob)
  out, lse = out[:, :prob.q_len], lse[:, :, :prob.q_len]
  return (out, lse) if return_lse else out


def _pad_axis(x, size, axis):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


@functools.lru_cache(maxsize=None)
def _vjp_for(fwd: Callable, bwd: Callable):
  """One ``custom_vjp`` per backend: flash-style backward from the saved output and lse."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
  def attn(q, k, v, q_seg, kv_seg, prob):
    return fwd(q, k, v, q_seg, kv_seg, prob)

  def attn_fwd(q, k, v, q_seg, kv_seg, prob):
    # Named residuals: a remat policy saving them skips this forward in the backward.
    out, lse = tag_residuals(*fwd(q, k, v, q_seg, kv_seg, prob))
    return (out, lse), (q, k, v, q_seg, kv_seg, out, lse)

  def attn_bwd(prob, res, cts):
    q, k, v, q_seg, kv_seg, out, lse = res
    d_out, d_lse = cts
    dq, dk, dv = bwd(q, k, v, q_seg, kv_seg, out, lse, d_out, d_lse, prob)
    return dq, dk, dv, _int_zero(q_seg), _int_zero(kv_seg)

  attn.defvjp(attn_fwd, attn_bwd)
  return attn


def _int_zero(x):
  return None if x is None else np.zeros(x.shape, jax.dtypes.float0)


def bwd_row_stats(out, lse, d_out, d_lse):
  """Per-row backward statistics, [B, Hq, T] fp32 each.

  ``lse_b``: lse with ``-inf`` (rows that see nothing) replaced by ``+inf`` so
  ``exp(s - lse_b) == 0`` there without a guard. ``delta = rowsum(dO * O) - d_lse`` (0 on empty
  rows): ``dS = P * (dP - delta)`` then also carries the lse cotangent (``d lse / d s = P``).
  """
  delta = jnp.einsum("bthd,bthd->bht", d_out.astype(jnp.float32), out.astype(jnp.float32))
  seen = jnp.isfinite(lse)
  delta = jnp.where(seen, delta - d_lse.astype(jnp.float32), 0.0)
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
