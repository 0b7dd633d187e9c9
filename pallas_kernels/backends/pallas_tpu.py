"""Pallas Mosaic TPU block-sparse flash attention (``backend="pallas_tpu"``): forward, dQ, dK/dV.

Each kernel walks a flat *schedule* of visited tiles read from the block tables (scalar prefetch,
SMEM): grid ``(batch, kv_head, step)``, where the steps of one output tile (a query tile for the
forward and dQ kernels, a KV tile for the dK/dV kernel) are consecutive, so its accumulators stay in
VMEM and its output block is written once. Step ``s`` carries the output tile (``rows[s]``) and
``codes[s] = other_tile * 16 + flags`` (compute, partial, first, last). Index maps read these, so
only visited tiles are DMA'd; a tile visited by no one still gets one step (compute skipped) that
writes zeros (lse ``-inf``). Compared with a ``(row, table column)`` grid this never spends grid
steps on padding, which matters for the dK/dV pass: the sink / stride KV tiles are visited by every
query tile, so the padded per-KV-tile table is ``n_kv x n_q``.

The schedule is split into several ``pallas_call``s at output-tile boundaries when it exceeds
``max_steps`` (default 16384 steps, 128 KiB of SMEM) so the scalar-prefetch operands stay small.

GQA: one grid step processes the ``G = Hq // Hkv`` query heads of a KV head against one K/V tile.
The token mask is evaluated only on partial tiles (``pl.when`` on the flag); segment ids are
compared in every visited tile. Layouts follow the splash-attention kernel: head-major
``[B, H, T, D]`` operands, lane-broadcast (``[B, T, 128]``) and sublane-broadcast (``[B, 8, T]``)
segment ids, per-row statistics as ``[B, Hkv, G, T]`` fp32.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.backends import _frame
from pallas_kernels.block_tables import block_tables
from pallas_kernels.patterns.truncating import allowed_truncating
from pallas_kernels.spec import as_spec

_F32 = jnp.float32
_LANES, _SUBLANES = 128, 8
_NT = (((1,), (1,)), ((), ()))   # a @ b.T
_NN = (((1,), (0,)), ((), ()))   # a @ b
_SQ = getattr(pl, "squeezed", None)
_COMPUTE, _PARTIAL, _FIRST, _LAST = 1, 2, 4, 8
DEFAULT_MAX_STEPS = 1 << 14


def tpu_attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, q_offset: int = 0,
                  kv_offset: int = 0, scale: float | None = None, return_lse: bool = False,
                  block_q: int | None = None, block_k: int | None = None, interpret=False,
                  max_steps: int = DEFAULT_MAX_STEPS):
  """Pallas TPU attention; same contract as ``pallas_kernels.api.attention``.

  Args (beyond the common ones):
    block_q, block_k: tiles (default ``max(spec.block, 128)``; Mosaic wants multiples of 128).
    interpret: ``False`` on TPU; ``True`` or a ``pltpu.InterpretParams`` runs the kernels on CPU.
    max_steps: schedule steps per ``pallas_call`` (bounds the SMEM of the prefetched schedule).
  """
  spec = as_spec(spec)
  kv_segment_ids = _frame.check_inputs(q, k, v, segment_ids, kv_segment_ids, q_offset, kv_offset,
                                       scale)
  tile = max(spec.block, _LANES)
  prob = _frame.make_problem(
      spec, q, k, q_offset=q_offset, kv_offset=kv_offset, scale=scale,
      block_q=tile if block_q is None else block_q, block_k=tile if block_k is None else block_k,
      options={"interpret": _Hashable(interpret), "max_steps": int(max_steps)})
  return _frame.run_blocked(_forward, _backward, prob, q, k, v, segment_ids, kv_segment_ids,
                            return_lse)


@dataclasses.dataclass(frozen=True, eq=False)
class _Hashable:
  """Wraps an ``interpret`` value (``InterpretParams`` may be unhashable) for the static Problem."""
  value: object

  def __eq__(self, other):
    return isinstance(other, _Hashable) and (self.value is other.value or
                                             self.value == other.value)

  def __hash__(self):
    return hash(repr(self.value))


# ----------------------------------------------------------------------------------- schedule
@dataclasses.dataclass(frozen=True)
class _Chunk:
  row0: int
  row1: int
  rows: np.ndarray    # int32 [steps]: output tile of each step
  codes: np.ndarray   # int32 [steps]: other tile * 16 + flags


@functools.lru_cache(maxsize=64)
def _schedule(prob: _frame.Problem, transposed: bool) -> tuple[_Chunk, ...]:
  """Flat step lists of the forward (per query tile) or backward (per KV tile) tables."""
  bt = block_tables(prob.spec, prob.q_len, prob.kv_len, block_q=prob.block_q,
                    block_k=prob.block_k, q_offset=prob.q_offset, kv_offset=prob.kv_offset)
  if transposed:
    ptr, other, partial = bt.bwd_indptr, bt.bwd_indices, bt.bwd_indices_partial
  else:
    ptr, other, partial = bt.fwd_indptr, bt.fwd_indices, bt.fwd_indices_partial
  cnt = np.diff(ptr)
  steps = np.maximum(cnt, 1)                    # an unvisited output tile still gets one step
  n_rows, total = len(cnt), int(steps.sum())
  start = np.cumsum(steps) - steps
  rows = np.repeat(np.arange(n_rows, dtype=np.int32), steps)
  pos = np.arange(total) - start[rows]          # step index within its row
  real = pos < cnt[rows]
  src = np.minimum(ptr[rows] + pos, max(len(other) - 1, 0))
  codes = np.where(real, other[src] if len(other) else 0, 0).astype(np.int32) * 16
  codes |= np.where(real, _COMPUTE, 0).astype(np.int32)
  codes |= np.where(real & (partial[src] if len(other) else False), _PARTIAL, 0).astype(np.int32)
  codes |= np.where(pos == 0, _FIRST, 0).astype(np.int32)
  codes |= np.where(pos == steps[rows] - 1, _LAST, 0).astype(np.int32)
  chunks, max_steps, r0 = [], prob.option("max_steps"), 0
  end = start + steps
  while r0 < n_rows:                            # whole rows, at most max_steps steps (or one row)
    r1 = max(int(np.searchsorted(end, start[r0] + max_steps, side="right")), r0 + 1)
    s0, s1 = int(start[r0]), int(end[r1 - 1])
    chunks.append(_Chunk(r0, r1, rows[s0:s1], codes[s0:s1]))
    r0 = r1
  return tuple(chunks)


# ----------------------------------------------------------------------------------- in-kernel
def _flags(codes_ref, s):
  """(visited tile, compute, partial, first, last) of step ``s``."""
  code = codes_ref[s]
  bit = lambda f: (code & f) != 0
  return _other(codes_ref, s), bit(_COMPUTE), bit(_PARTIAL), bit(_FIRST), bit(_LAST)


def _tile_mask(prob, q_tile, k_tile, shape, q_axis):
  """Token mask of one tile (``q_axis`` 0: [block_q, block_k]; 1: transposed)."""
  q_row = q_tile * prob.block_q + lax.broadcasted_iota(jnp.int32, shape, q_axis)
  k_row = k_tile * prob.block_k + lax.broadcasted_iota(jnp.int32, shape, 1 - q_axis)
  m = allowed_truncating(prob.spec, q_row + prob.q_offset, k_row + prob.kv_offset)
  return m & (q_row < prob.q_len) & (k_row < prob.kv_len)


def _when_computing(compute, partial, body):
  """Runs ``body(token_mask=...)`` on visited tiles; the token mask only on partial ones."""
  pl.when(compute & partial)(lambda: body(True))
  pl.when(compute & jnp.logical_not(partial))(lambda: body(False))


def _fwd_kernel(rows_ref, codes_ref, q_ref, k_ref, v_ref, *refs, prob, groups, has_seg):
  if has_seg:
    qs_ref, ks_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
  else:
    o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
  s = pl.program_id(2)
  k_tile, compute, partial, first, last = _flags(codes_ref, s)
  q_tile = rows_ref[s]
  bq, bk = prob.block_q, prob.block_k

  @pl.when(first)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, _F32)
    l_sc[...] = jnp.zeros(l_sc.shape, _F32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, _F32)

  def body(token):
    k, v = k_ref[...], v_ref[...]
    mask = _tile_mask(prob, q_tile, k_tile, (bq, bk), 0) if token else None
    if has_seg:
      seg = qs_ref[...][:, :1] == ks_ref[...][:1, :]
      mask = seg if mask is None else mask & seg
    for g in range(groups):
      sc = lax.dot_general(q_ref[g], k, _NT, preferred_element_type=_F32) * prob.scale
      if mask is not None:
        sc = jnp.where(mask, sc, -jnp.inf)
      m_prev = m_sc[g]                                           # [bq, 128] lane-replicated
      m_next = jnp.maximum(m_prev, sc.max(axis=-1, keepdims=True))
      m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)        # rows with nothing seen yet
      p = jnp.exp(sc - m_safe[:, :1])
      alpha = jnp.exp(m_prev - m_safe)
      l_sc[g] = alpha * l_sc[g] + p.sum(axis=-1, keepdims=True)
      m_sc[g] = m_next
      pv = lax.dot_general(p.astype(v.dtype), v, _NN, preferred_element_type=_F32)
      acc_sc[g] = alpha[:, :1] * acc_sc[g] + pv

  _when_computing(compute, partial, body)

  @pl.when(last)
  def _finish():
    for g in range(groups):
      l, m = l_sc[g], m_sc[g]
      seen = l > 0
      l_safe = jnp.where(seen, l, 1.0)
      o_ref[g] = (acc_sc[g] / l_safe[:, :1]).astype(o_ref.dtype)
      lse = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)       # [bq, 128]
      lse_ref[pl.ds(g, 1), :] = jnp.transpose(lse)[:1, :]        # -> [1, bq] row


def _dq_kernel(rows_ref, codes_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, *refs, prob,
               groups, has_seg):
  if has_seg:
    qs_ref, ks_ref, dq_ref, dq_sc = refs
  else:
    dq_ref, dq_sc = refs
  s = pl.program_id(2)
  k_tile, compute, partial, first, last = _flags(codes_ref, s)
  q_tile = rows_ref[s]

  @pl.when(first)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, _F32)

  def body(token):
    k, v = k_ref[...], v_ref[...]
    mask = _tile_mask(prob, q_tile, k_tile, (prob.block_q, prob.block_k), 0) if token else None
    if has_seg:
      seg = qs_ref[...][:, :1] == ks_ref[...][:1, :]
      mask = seg if mask is None else mask & seg
    for g in range(groups):
      sc = lax.dot_general(q_ref[g], k, _NT, preferred_element_type=_F32) * prob.scale
      if mask is not None:
        sc = jnp.where(mask, sc, -jnp.inf)
      p = jnp.exp(sc - jnp.expand_dims(lse_ref[g], -1))
      dp = lax.dot_general(do_ref[g], v, _NT, preferred_element_type=_F32)
      ds = p * (dp - jnp.expand_dims(dl_ref[g], -1))
      dq_sc[g] += lax.dot_general(ds.astype(k.dtype), k, _NN, preferred_element_type=_F32)

  _when_computing(compute, partial, body)

  @pl.when(last)
  def _finish():
    dq_ref[...] = (dq_sc[...] * prob.scale).astype(dq_ref.dtype)


def _dkv_kernel(rows_ref, codes_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, *refs, prob,
                groups, has_seg):
  if has_seg:
    qs_ref, ks_ref, dk_ref, dv_ref, dk_sc, dv_sc = refs
  else:
    dk_ref, dv_ref, dk_sc, dv_sc = refs
  s = pl.program_id(2)
  q_tile, compute, partial, first, last = _flags(codes_ref, s)
  k_tile = rows_ref[s]

  @pl.when(first)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, _F32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, _F32)

  def body(token):                      # transposed tiles: [block_k, block_q]
    k, v = k_ref[...], v_ref[...]
    shape = (prob.block_k, prob.block_q)
    mask = _tile_mask(prob, q_tile, k_tile, shape, 1) if token else None
    if has_seg:
      seg = ks_ref[...][:, :1] == qs_ref[...][:1, :]
      mask = seg if mask is None else mask & seg
    dk, dv = dk_sc[...], dv_sc[...]
    for g in range(groups):
      q, do = q_ref[g], do_ref[g]
      sc = lax.dot_general(k, q, _NT, preferred_element_type=_F32) * prob.scale
      if mask is not None:
        sc = jnp.where(mask, sc, -jnp.inf)
      p = jnp.exp(sc - lse_ref[pl.ds(g, 1), :])
      dv += lax.dot_general(p.astype(do.dtype), do, _NN, preferred_element_type=_F32)
      dp = lax.dot_general(v, do, _NT, preferred_element_type=_F32)
      ds = p * (dp - dl_ref[pl.ds(g, 1), :])
      dk += lax.dot_general(ds.astype(q.dtype), q, _NN, preferred_element_type=_F32)
    dk_sc[...], dv_sc[...] = dk, dv

  _when_computing(compute, partial, body)

  @pl.when(last)
  def _finish():
    dk_ref[...] = (dk_sc[...] * prob.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


# ----------------------------------------------------------------------------------- calls
# Index maps: grid (b, h, s), scalar prefetch (rows, codes). ROW is the step's output tile, OTHER
# the tile it visits; ``r0`` shifts output tiles into the current chunk's output array.
def _row(rows, codes, s):
  del codes
  return rows[s]


def _other(codes, s):
  return lax.shift_right_logical(codes[s], 4)


def _visited(rows, codes, s):
  del rows
  return _other(codes, s)


def _heads(block, tile, r0=0):
  """[B, H, T, D] operands; ``block = (G or None, tile size, D)``."""
  return pl.BlockSpec((_SQ, *(_SQ if b is None else b for b in block)),
                      lambda b, h, s, rows, codes: (b, h, tile(rows, codes, s) - r0, 0))


def _stats(groups, size, tile, r0=0):
  """[B, Hkv, G, T] fp32 per-row statistics."""
  return pl.BlockSpec((_SQ, _SQ, groups, size),
                      lambda b, h, s, rows, codes: (b, h, 0, tile(rows, codes, s) - r0))


def _seg_lanes(size, tile):
  """[B, T, 128] segment ids (lane-broadcast): a tile's ids as a column."""
  return pl.BlockSpec((_SQ, size, _LANES),
                      lambda b, h, s, rows, codes: (b, tile(rows, codes, s), 0))


def _seg_sublanes(size, tile):
  """[B, 8, T] segment ids (sublane-broadcast): a tile's ids as a row."""
  return pl.BlockSpec((_SQ, _SUBLANES, size),
                      lambda b, h, s, rows, codes: (b, 0, tile(rows, codes, s)))


def _seg_layouts(seg):
  B, T = seg.shape
  return (jnp.broadcast_to(seg[:, :, None], (B, T, _LANES)),
          jnp.broadcast_to(seg[:, None, :], (B, _SUBLANES, T)))


def _call(kernel, chunk, grid_bh, in_specs, out_specs, out_shape, scratch, prob, args):
  gs = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2, grid=(*grid_bh, len(chunk.rows)),
                                    in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch)
  return pl.pallas_call(
      kernel, grid_spec=gs, out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=prob.option("interpret").value,
  )(jnp.asarray(chunk.rows), jnp.asarray(chunk.codes), *args)


def _concat(parts, axis):
  return jnp.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


def _forward(q, k, v, q_seg, kv_seg, prob):
  B, tq, hq, d = q.shape
  hkv = k.shape[2]
  G, bq, bk = hq // hkv, prob.block_q, prob.block_k
  qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  has_seg = q_seg is not None
  in_specs = [_heads((G, bq, d), _row), _heads((None, bk, d), _visited),
              _heads((None, bk, d), _visited)]
  args = [qh, kh, vh]
  if has_seg:
    in_specs += [_seg_lanes(bq, _row), _seg_sublanes(bk, _visited)]
    args += [_seg_layouts(q_seg)[0], _seg_layouts(kv_seg)[1]]
  kernel = functools.partial(_fwd_kernel, prob=prob, groups=G, has_seg=has_seg)
  scratch = [pltpu.VMEM((G, bq, _LANES), _F32), pltpu.VMEM((G, bq, _LANES), _F32),
             pltpu.VMEM((G, bq, d), _F32)]
  outs, lses = [], []
  for ch in _schedule(prob, False):
    n_rows = (ch.row1 - ch.row0) * bq
    out_specs = [_heads((G, bq, d), _row, ch.row0), _stats(G, bq, _row, ch.row0)]
    out_shape = [jax.ShapeDtypeStruct((B, hq, n_rows, d), q.dtype),
                 jax.ShapeDtypeStruct((B, hkv, G, n_rows), _F32)]
    o, lse = _call(kernel, ch, (B, hkv), in_specs, out_specs, out_shape, scratch, prob, args)
    outs.append(o)
    lses.append(lse)
  return _concat(outs, 2).transpose(0, 2, 1, 3), _concat(lses, 3).reshape(B, hq, tq)


def _backward(q, k, v, q_seg, kv_seg, out, lse, d_out, d_lse, prob):
  B, tq, hq, d = q.shape
  hkv = k.shape[2]
  G, bq, bk = hq // hkv, prob.block_q, prob.block_k
  lse_b, delta = _frame.bwd_row_stats(out, lse, d_out, d_lse)
  lse_b, delta = lse_b.reshape(B, hkv, G, tq), delta.reshape(B, hkv, G, tq)
  qh, kh, vh, doh = (x.transpose(0, 2, 1, 3) for x in (q, k, v, d_out.astype(q.dtype)))
  args = [qh, kh, vh, doh, lse_b, delta]
  has_seg = q_seg is not None
  if has_seg:
    qs_lanes, qs_sub = _seg_layouts(q_seg)
    ks_lanes, ks_sub = _seg_layouts(kv_seg)

  # dQ: per query tile (forward schedule)
  in_specs = [_heads((G, bq, d), _row), _heads((None, bk, d), _visited),
              _heads((None, bk, d), _visited), _heads((G, bq, d), _row),
              _stats(G, bq, _row), _stats(G, bq, _row)]
  extra = []
  if has_seg:
    in_specs += [_seg_lanes(bq, _row), _seg_sublanes(bk, _visited)]
    extra = [qs_lanes, ks_sub]
  kernel = functools.partial(_dq_kernel, prob=prob, groups=G, has_seg=has_seg)
  dqs = []
  for ch in _schedule(prob, False):
    out_shape = jax.ShapeDtypeStruct((B, hq, (ch.row1 - ch.row0) * bq, d), q.dtype)
    dqs.append(_call(kernel, ch, (B, hkv), in_specs, _heads((G, bq, d), _row, ch.row0),
                     out_shape, [pltpu.VMEM((G, bq, d), _F32)], prob, args + extra))

  # dK, dV: per KV tile (transposed schedule), the G query heads of the group accumulated
  in_specs = [_heads((G, bq, d), _visited), _heads((None, bk, d), _row),
              _heads((None, bk, d), _row), _heads((G, bq, d), _visited),
              _stats(G, bq, _visited), _stats(G, bq, _visited)]
  extra = []
  if has_seg:
    in_specs += [_seg_sublanes(bq, _visited), _seg_lanes(bk, _row)]
    extra = [qs_sub, ks_lanes]
  kernel = functools.partial(_dkv_kernel, prob=prob, groups=G, has_seg=has_seg)
  dks, dvs = [], []
  for ch in _schedule(prob, True):
    n_rows = (ch.row1 - ch.row0) * bk
    out_specs = [_heads((None, bk, d), _row, ch.row0), _heads((None, bk, d), _row, ch.row0)]
    out_shape = [jax.ShapeDtypeStruct((B, hkv, n_rows, d), k.dtype),
                 jax.ShapeDtypeStruct((B, hkv, n_rows, d), v.dtype)]
    dk, dv = _call(kernel, ch, (B, hkv), in_specs, out_specs, out_shape,
                   [pltpu.VMEM((bk, d), _F32), pltpu.VMEM((bk, d), _F32)], prob, args + extra)
    dks.append(dk)
    dvs.append(dv)
  return tuple(_concat(x, 2).transpose(0, 2, 1, 3) for x in (dqs, dks, dvs))
