"""Block-sparse attention forward in Pallas Mosaic GPU (Hopper, FA3 style).

``pallas_gpu.attention`` takes this forward by default on Hopper (``TritonConfig.fwd_impl="auto"``,
where it applies; ``"mosaic"`` forces it). Its base-2 lse feeds either backward: the Mosaic GPU
one of ``pallas_gpu_mosaic_bwd.py`` (the default where it applies) or the Triton kernels. GPU
tests: ``tests/gpu/test_gpu_pallas_gpu.py`` (``-k mosaic``).
Measured against the Triton forward in docs/kernels.md ("Pallas GPU (Triton lowering)").

Structure follows jax's ``pallas/ops/gpu/attention_mgpu.py`` forward: per CTA two compute
warpgroups (``block_q`` query rows each) and one memory warpgroup streaming K/V tiles with TMA into
a ring of ``max_concurrent_steps`` shared-memory slots, wgmma for both products, exp2 softmax.
The block-sparse change: the memory warpgroup and the compute warpgroups walk the same full-first
visit list of the CTA's ``2 * block_q`` rows (``gpu_tables.kernel_tables``, read from global memory
one scalar at a time) instead of ``range(kv_steps)``; the partial entries run a second loop that
applies ``spec.allowed``. Both warpgroups take the same number of steps, so the schedule barrier
pairs up without the causal epilogue of the original.

Limits (``shape_limits``, the one list the backward kernels share): bf16/f16, head_dim % 64 == 0,
q_offset == kv_offset == 0, Tq == Tk, T a multiple of ``2 * block_q`` and ``block_kv``
(``pallas_gpu`` zero-pads ragged lengths to that: exact, as every pattern is causal); GQA by
``q_head // (Hq // Hkv)``.
Packed rows (segment ids, since 2026-12-05): the visit lists become per batch row
(``gpu_tables.segment_visits``, built in XLA): tiles whose query and key blocks share no document
are dropped, tiles inside one document stay full, and tiles straddling a boundary are masked by
pattern and segment id (``Segments``: each compute warpgroup loads its rows' ids once, the memory
warpgroup streams each tile's ids with it). Without segment ids the kernels are unchanged (their
Mosaic GPU IR is identical to before).
Rows that see no key get a zero output and lse -inf (finite running-max start, as in Triton).
CPU: it lowers for CUDA, and runs against the dense reference in Mosaic GPU interpret mode
(``pallas_kernels/mosaic_interpret.py``; ``tests/test_mosaic_interpret.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.mosaic.gpu import utils as mgpu_utils
from jax._src.lib.mlir import ir
from jax._src.lib.mlir.dialects import arith as arith_dialect
from jax._src.lib.mlir.dialects import llvm as llvm_dialect

from pallas_kernels.backends._frame import check_segment_ids
from pallas_kernels.backends.gpu_tables import kernel_tables, visit_table
from pallas_kernels.spec import AttentionSpec

M_INIT = -1e30
# The named hardware barriers of ``named_barrier``: compute warpgroup w owns NAMED_BAR + w.
# Mosaic GPU's own barriers are 0 (gpu.barrier) and 1..3 (warpgroup_barrier: 1 + warpgroup).
NAMED_BAR = 8


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
  block_q: int = 64        # rows per compute warpgroup (a CTA covers 2 * block_q rows)
  block_kv: int = 128
  max_concurrent_steps: int = 2
  # CTA order within a head. True (the default since 2026-12-07): CTA i takes query row
  # n - 1 - i, the longest (for causal patterns) first, as FA4's causal Sm90 forward does
  # (SingleTileLPTScheduler). False: row i, shortest first (the order until then). Rows of one
  # head run side by side (the grid is heads-major), and under full causal attention
  # shortest-first spreads the resident CTAs' K/V positions over the head's whole prefix, which
  # overflows the 50 MB L2 once one head's K and V exceed it (128K at D=128: 64 MB);
  # longest-first keeps them in near lockstep (model: benchmarks/l2_row_order.py). Measured on an
  # H100 (benchmarks/mosaic_fwd.py; docs/benchmarks.md, fifteenth sitting): full causal at 128K
  # 603 against 570 TFLOP/s (1.058x; GQA 32/8 604), at 64K 624 against 622; sink+window and
  # strided within 0.5% either way at 64K and 128K.
  longest_first: bool = True
  # FA4's Sm90 forward schedule (``pallas_gpu_mosaic_overlap``), an A/B option until timed:
  # intra-warpgroup overlap (S of tile e and P V of tile e - 1 issued back to back, the softmax
  # of tile e under the P V) with FA3's named-barrier warp scheduler around the pair. Each part
  # alone was slower (docs/kernels.md); this is the combination FA4 runs.
  overlap: bool = False
  # Persistent CTAs, an A/B option until timed: 0 (the default) launches one CTA per (head,
  # query row, batch row) work item; n > 0 launches n CTAs (the GPU's SM count: 132 on an H100
  # or H200) that each walk the items i, i + n, ... in the grid's dispatch order (heads
  # fastest). The memory warpgroup's ring runs on across items, so it fetches the next item's
  # first K/V tiles while the compute warpgroups finish the current one; the per-CTA launch,
  # barrier set-up and first loads are paid once. A sparse row block is short (sink+window 64 +
  # 4096: 33 tiles), so that start-up is a few percent of it. FA4's Sm90 forward does not do
  # this (SingleTileScheduler / SingleTileLPTScheduler).
  persistent_ctas: int = 0

  def __post_init__(self):
    if self.persistent_ctas < 0:
      raise ValueError(f"MosaicConfig.persistent_ctas={self.persistent_ctas}: expected 0 (off) "
                       "or a CTA count")


def shape_limits(q_len: int, kv_len: int, head_dim: int, dtype, *, step: int,
                 offsets: bool = False, padded_len: int | None = None) -> str | None:
  """Why the Mosaic GPU kernels here and in ``pallas_gpu_mosaic_bwd`` cannot take a call with
  these static facts, the device aside (None when they can). ``step``: the length multiple a
  kernel's tiles need (``fwd_step``, ``pallas_gpu_mosaic_bwd.step``). ``padded_len``: the length
  the caller zero-pads both to (``pallas_gpu`` does; exact, as every pattern is causal: no real
  query sees a padded key). The one list of limits."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"dtype {jnp.dtype(dtype).name} (needs bf16/f16)"
  if head_dim % 64:
    return f"head_dim {head_dim} (needs a multiple of 64)"
  if offsets or q_len != kv_len:
    return "offsets or Tq != Tk"
  n = q_len if padded_len is None else padded_len
  if n % step:
    padded = "" if n == q_len else f" padded to {n}"
    return f"length {q_len}{padded} (needs a multiple of {step})"
  return None


def fwd_step(config: MosaicConfig) -> int:
  """The length multiple the forward's tiles need."""
  return math.lcm(2 * config.block_q, config.block_kv)


def tiled_smem(shape, dtype, swizzle: int = 128):
  """A shared-memory buffer in the tiled, swizzled layout TMA and wgmma take: (8, 64)-tiled and
  128-byte-swizzled for 2-byte types by default; ``swizzle`` 64 gives (8, 32) tiles (every
  operand of one wgmma needs the same swizzle)."""
  cols = swizzle // jnp.dtype(dtype).itemsize
  return plgpu.SMEM(shape, dtype,
                    transforms=(plgpu.TilingTransform((8, cols)), plgpu.SwizzleTransform(swizzle)))


def feed_ring(n_tot, mcs, issue, used, split=False, e0=0):
  """The memory warpgroup's loop: ``issue(e, slot)`` for the visit-list entries ``0..n_tot-1``
  into a ring of ``mcs`` shared-memory slots; entry ``e >= mcs`` first waits until every barrier
  of ``used`` has released its slot. With ``split``, stream ``i`` of entry ``e >= mcs``
  (``issue(e, slot, (i,))``) waits only for ``used[i]``: each stream refills its slot as soon as
  its own consumer releases it. ``e0`` (persistent CTAs): the entries the ring has carried for
  the CTA's earlier work items; entry ``e`` is then ring entry ``e0 + e``."""
  if not isinstance(e0, int):
    @pl.loop(0, n_tot)
    def _(e):
      g = e0 + e
      slot = lax.rem(g, jnp.array(mcs, g.dtype))
      streams = [(i,) for i in range(len(used))] if split else [tuple(range(len(used)))]
      for st in streams:
        @pl.when(g >= mcs)
        def _(st=st):
          for i in st:
            plgpu.barrier_wait(used[i].at[slot])
        if split:
          issue(e, slot, st)
        else:
          issue(e, slot)
    return
  for i in range(mcs):
    pl.when(i < n_tot)(functools.partial(issue, i, i))

  @pl.loop(0, jnp.maximum(n_tot - mcs, 0))
  def _(e):
    slot = lax.rem(e, jnp.array(mcs, e.dtype))
    if split:
      for i, bar in enumerate(used):
        plgpu.barrier_wait(bar.at[slot])
        issue(e + mcs, slot, (i,))
      return
    for bar in used:
      plgpu.barrier_wait(bar.at[slot])
    issue(e + mcs, slot)


def stream_kv(refs, smem, bars, used, visit, *, batch, kv_head, n_tot, bkv, mcs, split=False,
              seg=None, e0=0):
  """The memory warpgroup of the forward and dQ kernels: the K/V tiles of the CTA's visit list
  (``visit(i)``: its column ``i``, block indices from column 2) into the ring. ``refs``,
  ``smem``, ``bars`` and ``used`` are (K, V) pairs. By default a slot is refilled with K and V
  once both are released. With ``split`` (``feed_ring``'s) each is refilled as soon as its own
  ``used`` barrier releases it: the overlap forward releases V one step after K, and waiting for
  both there deadlocks its warpgroups on a 2-slot ring (found in Mosaic GPU interpret mode on
  2026-12-05). ``seg`` (packed rows): a ``Segments``; each tile's key segment ids travel with K
  (released with K). ``e0``: ``feed_ring``'s (persistent CTAs)."""
  def issue(e, slot, streams=(0, 1)):
    blk = pl.ds(visit(e + 2) * bkv, bkv)
    for i in streams:
      plgpu.copy_gmem_to_smem(refs[i].at[batch, blk, kv_head], smem[i].at[slot], bars[i].at[slot])
    if seg is not None and 0 in streams:
      seg.issue(batch, blk, slot)
  feed_ring(n_tot, mcs, issue, used, split=split, e0=e0)


@dataclasses.dataclass
class Segments:
  """A kernel's segment ids (packed rows), for the tiles its visit list masks.

  ``own_ref`` / ``own_smem`` / ``own_bar``: the ids of the rows a compute warpgroup owns (its
  query rows in the forward and dQ, its keys in dK/dV), loaded once, one buffer per warpgroup.
  ``ring_ref`` / ``ring_smem`` / ``ring_bar``: the ids of the streamed tiles (keys, or queries
  in dK/dV), one ring slot per K/V (or Q) slot, issued with every tile and waited for at every
  step (full tiles too: the barrier phases must pair up), read only by masked steps. In every
  kernel the owned ids run along the tile's rows (dK/dV computes the transposed tile) and the
  streamed ones along its columns."""
  own_ref: object
  ring_ref: object
  own_smem: object
  ring_smem: object
  own_bar: object
  ring_bar: object

  @staticmethod
  def scratch(n_own, mcs, n_ring):
    """The ``run_scoped`` groups: (own and ring buffers), (own and ring barriers)."""
    return ((plgpu.SMEM((2, n_own), jnp.int32), plgpu.SMEM((mcs, n_ring), jnp.int32)),
            (plgpu.Barrier(num_barriers=2), plgpu.Barrier(num_barriers=mcs)))

  @classmethod
  def of(cls, refs, scoped):
    """From the two id refs and the two ``scratch`` groups (None when ``refs`` is None)."""
    if refs is None:
      return None
    (own_smem, ring_smem), (own_bar, ring_bar) = scoped
    return cls(*refs, own_smem, ring_smem, own_bar, ring_bar)

  def issue(self, batch, blk, slot):
    """Memory warpgroup: the streamed tile's ids (tokens ``blk``) into ring slot ``slot``."""
    plgpu.copy_gmem_to_smem(self.ring_ref.at[batch, blk], self.ring_smem.at[slot],
                            self.ring_bar.at[slot])

  def load_own(self, batch, wg, rows):
    """Compute warpgroup ``wg``: its own rows' ids (tokens ``rows``) into registers."""
    plgpu.copy_gmem_to_smem(self.own_ref.at[batch, rows], self.own_smem.at[wg],
                            self.own_bar.at[wg])
    plgpu.barrier_wait(self.own_bar.at[wg])
    return plgpu.load(self.own_smem.at[wg], (), layout=plgpu.Layout.WGMMA.reduce(1))

  def ring(self, slot, masked):
    """A step's wait for its streamed ids; masked steps get them (registers), others None.
    Call before the step releases the slot."""
    plgpu.barrier_wait(self.ring_bar.at[slot])
    if not masked:
      return None
    return plgpu.load(self.ring_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))

  def same(self, own, ring, shape):
    """Tile mask: the owned and streamed ids agree (``shape``: the tile)."""
    return lax.broadcast_in_dim(own, shape, [0]) == lax.broadcast_in_dim(ring, shape, [1])


def launch(entry, out_type, grid, grid_names, *args):
  """``plgpu.kernel`` as every kernel here runs: two compute warpgroups and one memory one."""
  return plgpu.kernel(entry, out_type=out_type, grid=grid, grid_names=grid_names, num_threads=3,
                      thread_name="wg",
                      compiler_params=plgpu.CompilerParams(approx_math=True))(*args)


def segment_args(segment_ids, kv_segment_ids, batch: int, q_len: int, kv_len: int):
  """Checked int32 (q ids, kv ids) for a Mosaic kernel, or None (no segment ids)."""
  if segment_ids is None and kv_segment_ids is None:
    return None
  if segment_ids is None or kv_segment_ids is None:
    raise ValueError("pass both segment_ids and kv_segment_ids (or neither)")
  check_segment_ids(batch, ("segment_ids", segment_ids, q_len),
                    ("kv_segment_ids", kv_segment_ids, kv_len))
  return segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32)


def visit_reader(tab_ref, batch, row):
  """``visit(i)``: column ``i`` of the CTA's visit list in ``gpu_tables.visit_table``'s table."""
  if len(tab_ref.shape) == 3:
    return lambda i: tab_ref[batch, row, i]
  return lambda i: tab_ref[row, i]


def forward(q, k, v, spec: AttentionSpec, config: MosaicConfig, scale: float | None, *,
            segment_ids=None, kv_segment_ids=None):
  """The forward: argument checks, the visit table, the memory warpgroup, each compute
  warpgroup's Q load, its walk over its visit list (``_loop(w)``; ``w``: its refs, indices and
  constants; returns the unnormalised (acc, m_i, l_i)) and epilogue (normalise; out and base-2
  lse to global memory), the launch. Segment ids
  ([B, T] integers, both or neither): the visit lists skip tiles across documents and the
  masked tiles compare ids (``Segments``; ``w.seg``, ``w.qseg``).

  Returns (out [B, T, Hq, D], lse2 [B, Hq, T] base-2)."""
  B, T, hq, d = q.shape
  hkv = k.shape[2]
  dtype = q.dtype
  if k.shape != (B, T, hkv, d) or v.shape != k.shape or hq % hkv:
    raise ValueError(f"bad shapes q {q.shape} k {k.shape} v {v.shape}")
  why = shape_limits(T, T, d, dtype, step=fwd_step(config))
  if why:
    raise ValueError(f"the Mosaic forward cannot take {why}")
  seg = segment_args(segment_ids, kv_segment_ids, B, T, T)
  bq, bkv, mcs = config.block_q, config.block_kv, config.max_concurrent_steps
  g = hq // hkv
  n_rows = T // (2 * bq)
  tab = visit_table(kernel_tables(spec, T, T, 2 * bq, bkv).fwd, *(seg or (None, None)), 2 * bq,
                    bkv)
  c = (d ** -0.5 if scale is None else scale) * math.log2(math.e)
  loop = _loop
  if config.overlap:
    from pallas_kernels.backends.pallas_gpu_mosaic_overlap import overlap_loop  # pylint: disable=g-import-not-at-top
    loop = overlap_loop

  persistent = config.persistent_ctas > 0
  n_items = hq * n_rows * B

  def each_item(body):
    """``body(batch, q_head, row, e0)`` (returns ``e0`` plus the item's tiles) for each of the
    CTA's work items: its grid point, or with persistent CTAs the items ``cta + j * n`` in the
    grid's dispatch order (heads fastest), ``e0`` counting the ring's entries so far."""
    if not persistent:
      body(lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("q_seq"), 0)
      return
    cta, n = lax.axis_index("cta"), config.persistent_ctas

    def item(j, e0):
      i = cta + j * n
      rest = lax.div(i, hq)
      return body(lax.div(rest, n_rows), lax.rem(i, hq), lax.rem(rest, n_rows), e0)
    lax.fori_loop(0, lax.div(n_items - cta + n - 1, n), item, jnp.int32(0))

  def kernel(q_ref, k_ref, v_ref, tab_ref, seg_refs, out_ref, lse_ref, scoped):
    (qo_smem2, k_smem, v_smem, lse_smem2), (k_bar, v_bar, q_bar), (k_used, v_used), sched = (
        scoped[:4])
    sg = Segments.of(seg_refs, scoped[4:])
    wg = lax.axis_index("wg")

    def schedule_barrier():
      plgpu.barrier_arrive(sched)
      plgpu.barrier_wait(sched)

    def tiles(batch, row):
      if config.longest_first:
        row = n_rows - 1 - row
      visit = visit_reader(tab_ref, batch, row)
      return row, visit, visit(0), visit(1)

    @pl.when(wg < 2)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      qo_smem, lse_smem = qo_smem2.at[wg], lse_smem2.at[wg]

      def one(batch, q_head, row, e0):
        row, visit, n_full, n_tot = tiles(batch, row)
        q_base = row * (2 * bq) + wg * bq
        if persistent:   # the previous item's out and lse stores have read their buffers
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(q_base, bq), q_head], qo_smem,
                                q_bar.at[wg])
        plgpu.barrier_wait(q_bar.at[wg])
        qseg = None if sg is None else sg.load_own(batch, wg, pl.ds(q_base, bq))
        slot = ((lambda e: lax.rem(e, jnp.array(mcs, e.dtype))) if isinstance(e0, int) else
                (lambda e: lax.rem(e + e0, jnp.array(mcs, e0.dtype))))
        w = types.SimpleNamespace(
            qo_smem=qo_smem, k_smem=k_smem, v_smem=v_smem, k_bar=k_bar, v_bar=v_bar,
            k_used=k_used, v_used=v_used, sched=sched, schedule_barrier=schedule_barrier,
            visit=visit, wg=wg, q_base=q_base, n_full=n_full, n_tot=n_tot, spec=spec,
            c=c, bq=bq, bkv=bkv, d=d, dtype=dtype, mcs=mcs, seg=sg, qseg=qseg,
            slot=slot,
            first_slot=0 if isinstance(e0, int) else lax.rem(e0, jnp.array(mcs, e0.dtype)))
        acc, m_i, l_i = loop(w)
        seen = l_i > 0
        l_safe = jnp.where(seen, l_i, 1.0)
        acc *= lax.broadcast_in_dim(1.0 / l_safe, (bq, d), [0])
        qo_smem[...] = acc.astype(dtype)
        lse_smem[...] = jnp.where(seen, m_i + jnp.log(l_safe) * (1 / math.log(2)), -jnp.inf)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[batch, pl.ds(q_base, bq), q_head])
        plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[batch, q_head, pl.ds(q_base, bq)])
        if not persistent:
          plgpu.wait_smem_to_gmem(0)
        return e0 + n_tot
      each_item(one)
      if persistent:
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory():
      plgpu.set_max_registers(40, action="decrease")

      def one(batch, q_head, row, e0):
        _, visit, _, n_tot = tiles(batch, row)
        stream_kv((k_ref, v_ref), (k_smem, v_smem), (k_bar, v_bar), (k_used, v_used), visit,
                  batch=batch, kv_head=lax.div(q_head, jnp.array(g, q_head.dtype)),
                  n_tot=n_tot, bkv=bkv, mcs=mcs, split=config.overlap, seg=sg, e0=e0)
        return e0 + n_tot
      each_item(one)

  def entry(q_ref, k_ref, v_ref, tab_ref, *refs):
    seg_refs, (out_ref, lse_ref) = (refs[:2], refs[2:]) if seg else (None, refs)
    scratch = [tiled_smem((2, bq, d), dtype), tiled_smem((mcs, bkv, d), dtype),
               tiled_smem((mcs, bkv, d), dtype), plgpu.SMEM((2, bq), jnp.float32)]
    pl.run_scoped(
        lambda *a: kernel(q_ref, k_ref, v_ref, tab_ref, seg_refs, out_ref, lse_ref, a),
        scratch,
        (plgpu.Barrier(num_barriers=mcs), plgpu.Barrier(num_barriers=mcs),
         plgpu.Barrier(num_barriers=2)),
        (plgpu.Barrier(num_arrivals=2, num_barriers=mcs),) * 2,
        plgpu.Barrier(num_arrivals=2),
        *(Segments.scratch(bq, mcs, bkv) if seg else ()),
        collective_axes="wg",
    )

  grid, names = (((config.persistent_ctas,), ("cta",)) if persistent else
                 ((hq, n_rows, B), ("heads", "q_seq", "batch")))
  return launch(entry, [jax.ShapeDtypeStruct(q.shape, dtype),
                        jax.ShapeDtypeStruct((B, hq, T), jnp.float32)],
                grid, names, q, k, v, tab, *(seg or ()))


def named_barrier(op: str, whose: str):
  """``bar.sync`` (``op`` "sync") or ``bar.arrive`` ("arrive") on a compute warpgroup's named
  hardware barrier, counting both compute warpgroups (256 threads): ``whose`` "own" (barrier
  ``NAMED_BAR + w``, w = the calling warpgroup, 0 or 1) or "other" (``NAMED_BAR + 1 - w``).
  Emitted as PTX through ``plgpu.inline_mgpu``; FA3's ``warp_scheduler_barrier_sync/arrive``.
  Pallas Mosaic GPU has no named-barrier primitive."""
  if op not in ("sync", "arrive") or whose not in ("own", "other"):
    raise ValueError(f"named_barrier({op!r}, {whose!r})")

  def emit(ctx):
    del ctx
    i32 = ir.IntegerType.get_signless(32)
    wg = mgpu_utils.warpgroup_idx(sync=True)
    bar = (arith_dialect.addi(wg, mgpu_utils.c(NAMED_BAR, i32)) if whose == "own" else
           arith_dialect.subi(mgpu_utils.c(NAMED_BAR + 1, i32), wg))
    llvm_dialect.inline_asm(ir.Type.parse("!llvm.void"), [bar], f"bar.{op} $0, 256;", "r",
                            has_side_effects=True)
  # what pallas_kernels/mosaic_interpret.py models (count: 256 threads = 2 warpgroups)
  emit.named_barrier = dict(op=op, whose=whose, base=NAMED_BAR, warpgroups=2)
  plgpu.inline_mgpu()(emit)()


def tile_allowed(w, e, kseg=None):
  """``spec.allowed`` over visit-list entry ``e``'s (query row, key) tile, WGMMA layout; with
  ``kseg`` (the tile's key segment ids, ``w.seg.ring``) also same-segment pairs only."""
  kb = w.visit(e + 2)
  qi = plgpu.broadcasted_iota(jnp.int32, (w.bq, w.bkv), 0, layout=plgpu.Layout.WGMMA)
  ki = plgpu.broadcasted_iota(jnp.int32, (w.bq, w.bkv), 1, layout=plgpu.Layout.WGMMA)
  ok = w.spec.allowed(qi + w.q_base, ki + kb * w.bkv, xp=jnp)
  return ok if kseg is None else ok & w.seg.same(w.qseg, kseg, (w.bq, w.bkv))


def tile_softmax(w, s, e, m_i, masked, kseg=None):
  """The online-softmax step of visit-list entry ``e``'s scores ``s`` (fp32, WGMMA layout),
  shared by both compute loops: masked entries first apply ``tile_allowed`` (``kseg``: the
  tile's key segment ids), then (p, m_new, alpha) with the scale folded into exp2. ``p`` stays
  fp32; each loop converts it and updates the row sums where its schedule needs them."""
  if masked:
    s = jnp.where(tile_allowed(w, e, kseg), s, -jnp.inf)
  m_new = jnp.maximum(m_i, s.max(axis=1) * w.c)
  alpha = jnp.exp2(m_i - m_new)
  p = jnp.exp2(s * w.c - lax.broadcast_in_dim(m_new, s.shape, [0]))
  return p, m_new, alpha


def _loop(w):
  """The compute warpgroup's walk: per tile S = Q Kᵀ (wait), softmax, P V, with the schedule
  barrier meant to hand the tensor cores to the other warpgroup during the softmax. ptxas hoists
  the barrier's post-softmax arrive above the softmax (an mbarrier arrive; the softmax touches no
  memory), so the ping-pong is not enforced. Pinning the arrive after the softmax (a
  shared-memory store of the row sums just before it) was 3-5% slower at 64K on an H100
  (2026-12-07, docs/kernels.md), so the hoisted schedule stays. FA3's warp scheduler (named
  hardware barriers, ``bar.sync`` / ``bar.arrive`` emitted through ``plgpu.inline_mgpu``, around
  issuing S or both products) was 6-10% slower (H100, 2026-12-07, fifteenth sitting; the code is
  in git at ac5c9ce, ``MosaicConfig.scheduler``)."""
  bq, bkv, d, mcs = w.bq, w.bkv, w.d, w.mcs
  m_i = plgpu.layout_cast(jnp.full((bq,), M_INIT, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
  l_i = plgpu.layout_cast(jnp.full((bq,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
  acc = plgpu.layout_cast(jnp.full((bq, d), 0, jnp.float32), plgpu.Layout.WGMMA)

  @pl.when(w.n_tot > 0)
  def _():
    plgpu.barrier_wait(w.k_bar.at[w.first_slot])

  pl.when(w.wg == 1)(w.schedule_barrier)

  def step(e, carry, masked):
    acc, m_i, l_i = carry
    slot = w.slot(e)

    def qk_fn(acc_ref):
      plgpu.wgmma(acc_ref, w.qo_smem, plgpu.transpose_ref(w.k_smem.at[slot], (1, 0)))
      w.schedule_barrier()
      return acc_ref[...]
    s = pl.run_scoped(qk_fn, plgpu.ACC((bq, bkv), jnp.float32))
    kseg = None if w.seg is None else w.seg.ring(slot, masked)
    plgpu.barrier_arrive(w.k_used.at[slot])
    p, m_new, alpha = tile_softmax(w, s, e, m_i, masked, kseg)
    acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
    l_i *= alpha
    p16 = p.astype(w.dtype)
    l_i += p.sum(axis=1)
    acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))
    plgpu.barrier_arrive(w.sched)
    plgpu.barrier_wait(w.v_bar.at[slot])
    plgpu.barrier_wait(w.sched)

    def pv_fn(acc_ref):
      plgpu.wgmma(acc_ref, p16, w.v_smem.at[slot])
      nxt = e + 1
      nslot = w.slot(nxt)

      @pl.when(nxt < w.n_tot)
      def _():
        plgpu.barrier_wait(w.k_bar.at[nslot])
    acc = pl.run_state(pv_fn)(plgpu.ACC.init(acc))
    plgpu.barrier_arrive(w.v_used.at[slot])
    return acc, m_new, l_i

  carry = lax.fori_loop(0, w.n_full, functools.partial(step, masked=False), (acc, m_i, l_i))
  acc, m_i, l_i = lax.fori_loop(w.n_full, w.n_tot, functools.partial(step, masked=True), carry)
  pl.when(w.wg == 0)(w.schedule_barrier)
  return acc, m_i, l_i


@functools.partial(jax.jit, static_argnames=("spec", "config", "scale"))
def sparse_attention_fwd(q, k, v, spec: AttentionSpec, config: MosaicConfig = MosaicConfig(),
                         scale: float | None = None, segment_ids=None, kv_segment_ids=None):
  """Returns (out [B, T, Hq, D], lse2 [B, Hq, T] base-2); see the module docstring. Segment ids
  ([B, T] integers, both or neither): packed documents (``forward``)."""
  return forward(q, k, v, spec, config, scale, segment_ids=segment_ids,
                 kv_segment_ids=kv_segment_ids)
