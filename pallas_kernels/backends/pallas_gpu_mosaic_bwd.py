"""Block-sparse attention backward (dK/dV and dQ) in Pallas Mosaic GPU (Hopper, FA3 style),
driven by block tables.

``pallas_gpu``'s default backward where these kernels apply (``TritonConfig(bwd_impl="auto")``;
``"mosaic"`` forces them, ``"triton"`` takes the Triton dQ and dK/dV kernels). On an H200
(2026-12-04, ``benchmarks/attention.py``; docs/benchmarks.md, "Issue 14") they make
forward+backward 1.1-1.3x faster than the Triton backward for every pattern. Strided
forward+backward went from 0.76x to 0.87x FlashAttention-4, and GQA 32/8 now matches MHA. They
still trail FA4's Sm90 backward by 1.13-1.31x in backward time: two kernels recompute S and P, so
7 matmuls per tile against FA4's 5.
On CPU, ``tests/test_attention_pallas_gpu.py -k mosaic_bwd`` checks that both kernels lower to
Mosaic GPU. ``tests/gpu/test_gpu_pallas_gpu.py -k mosaic_bwd`` checks them against the dense
reference on a GPU. All 9 reference cases and the refusal test pass on an H200 (logs
``benchmarks/results/mosaic_bwd_gpu_2026-12-04.log`` and ``mosaic_bwd_gpu_rest_2026-12-04.log``).

dQ (``sparse_attention_dq``) is the forward's structure (see its docstring). dK/dV
(``sparse_attention_dkv``) mirrors the forward (``pallas_gpu_mosaic.py``) with the roles of Q and
K/V swapped:
- A CTA owns ``2 * block_kv`` keys of one query head: two compute warpgroups hold ``block_kv``
  keys each, K and V in shared memory for the whole kernel.
- A memory warpgroup streams the query tiles of the CTA's visit list
  (``gpu_tables.kernel_tables(...).bwd``: per KV block, the query blocks that see it, full ones
  first) with TMA into a ring of ``max_concurrent_steps`` slots: Q, dO, the base-2 lse and delta.
- Per query tile, each compute warpgroup runs four wgmma, in two groups (FA3's order, so the
  tensor cores work on dPᵀ while pT is computed):
  - sT = K Qᵀ with dPᵀ = V dOᵀ; then pT = exp2(c·sT − lse) and dSᵀ = pT (dPᵀ − delta);
  - dK += dSᵀ Q with dV += pT dO.
  Until 2026-12-06 dV and dPᵀ were issued after pT (``dp_with_s=False``, 1.2-3.4% slower; that
  option and the unmeasured ``acc_scope`` were removed on 2026-12-07, docs/kernels.md).
  The partial entries of the list run a second loop that applies ``spec.allowed``.
- Each query head writes its own dK/dV (``[B, T, Hq, D]``); GQA groups are summed after the kernel
  in fp32.

``sparse_attention_bwd`` (what ``bwd_impl="auto"`` takes since 2026-12-06, or ``"mosaic_fused"``)
is the same dK/dV kernel with dQ added (FA3's single pass, 5 matmuls per tile instead of 7):
- Each compute warpgroup writes its dSᵀ to shared memory (two buffers, by tile parity), and
  dK += dSᵀ Q reads it there.
- The two warpgroups then pair up on a barrier. Each computes half of dQ_tile's columns,
  dS K over the CTA's ``2 * block_kv`` keys, from both dS, as FA3 splits it.
- Each TMA reduce-adds its half into an fp32 accumulator in global memory, staged through
  swizzled shared memory. So a tile costs one 64 x D fp32 reduce-add per CTA, not one per
  warpgroup.
- K's column halves must be whole swizzle tiles: 128-byte swizzle where D % 128 == 0, else
  64-byte. ``block_q`` must be a multiple of the tile width (64 or 32 columns).
The first version (2026-12-05: each warpgroup reduce-added a full 64 x D dQ tile from its own dS,
through unswizzled staging) passed the GPU reference tests (``-k fused``) on an H200 but made
forward+backward 16-25% slower than the two kernels (docs/benchmarks.md, "Issue 14,
2026-12-05"). This version passes them on an H100 (2026-12-06, "seventh sitting"). Its backward
alone is 1.01x / 0.98x / 1.09x the two kernels (sink+window / strided / full causal, 64K), and
forward+backward is 0.99x / 0.97x / 1.06x. With ``MosaicBwdConfig.rederive`` (2026-12-06, eighth
sitting) its backward is 1.12x / 1.04x / 1.21x the two kernels, and ``bwd_impl="auto"`` takes
it. On CPU it matches the dense
reference in Mosaic GPU interpret mode, as do the dQ and dK/dV kernels
(``tests/test_mosaic_interpret.py``), and that run fails if the final pairing is left out
(the other warpgroup's last dQ still reads K when dK takes its buffer).

Limits (``unsupported`` says which): bf16/f16, head_dim % 64 == 0, zero offsets, Tq == Tk, T a
multiple of ``2 * block_kv`` and ``2 * block_q``. Rows that see no key carry lse ``+inf``, so
their p is 0. Segment ids (packed rows): as in the forward (``pallas_gpu_mosaic``'s docstring);
dK/dV's rows are keys, so its per-batch lists come from the transposed tables and the query tiles'
ids travel through the ring with Q.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.backends.gpu_tables import kernel_tables, visit_table
from pallas_kernels.backends.pallas_gpu_mosaic import (Segments, feed_ring, launch, segment_args,
                                                      shape_limits, stream_kv, tiled_smem,
                                                      visit_reader)
from pallas_kernels.spec import AttentionSpec


@dataclasses.dataclass(frozen=True)
class MosaicBwdConfig:
  block_q: int = 64          # query rows per streamed tile
  block_kv: int = 64         # keys per compute warpgroup (a CTA covers 2 * block_kv keys)
  max_concurrent_steps: int = 2
  # setmaxnreg of the two compute warpgroups and of the memory warpgroup. 2 x 128 x compute +
  # 128 x memory must fit the SM's 64K registers. (240, 24) is FA3's backward's; it is the
  # default since 2026-12-06 (with ``rederive``, the fused kernel 0.5-1.5% faster than (232, 40)).
  registers: tuple[int, int] = (240, 24)
  # dK/dV and fused kernels: re-derive K's and V's shared-memory refs (and the mask's offsets)
  # every step from the step's table entry, through an index LLVM cannot prove loop-invariant.
  # Otherwise LLVM hoists the 16 wgmma descriptors of K and V (32 registers) and the mask's
  # position vectors out of the loop, and ptxas spills (docs/kernels.md). Default since
  # 2026-12-06: the fused kernel 11-16% faster at 64K on an H100 (ptxas spill stores 420-468 B
  # -> 64-160 B; 12-92 B with registers (240, 24)).
  rederive: bool = True
  # (Tried and removed on 2026-12-07, none faster at 64K on an H100; docs/kernels.md:
  # ``rederive_dq``, the same for the fused dQ matmul's K refs; ``p_under_dp``, sT and dPᵀ as
  # two wgmma groups with Pᵀ computed under dPᵀ; ``dk_last``, FA3's dV, dQ, dK order with dQ
  # reduce-added under dK, 0.99x, in git at ac5c9ce.)

  def __post_init__(self):
    compute, memory = self.registers
    if (any(r % 8 or not 24 <= r <= 256 for r in self.registers)
        or 128 * (2 * compute + memory) > 65536):
      raise ValueError(f"MosaicBwdConfig.registers={self.registers}: each must be a multiple of "
                       "8 in [24, 256], and 2 * compute + memory at most 512")


def step(config: MosaicBwdConfig = MosaicBwdConfig()) -> int:
  """The length multiple both backward kernels' tiles need."""
  return math.lcm(2 * config.block_kv, 2 * config.block_q)


def unsupported(q_len: int, kv_len: int, head_dim: int, dtype, *, offsets: bool = False,
                config: MosaicBwdConfig = MosaicBwdConfig()) -> str | None:
  """Why these backward kernels cannot take a call (``pallas_gpu_mosaic.shape_limits``), or None."""
  why = shape_limits(q_len, kv_len, head_dim, dtype, step=step(config), offsets=offsets)
  return None if why is None else f"the Mosaic backward cannot take {why}"


def _check(q, k, v, do, config: MosaicBwdConfig, scale):
  """The kernels' argument checks; returns (B, T, Hq, Hkv, D, group, scale, scale * log2 e)."""
  B, T, hq, d = q.shape
  hkv = k.shape[2]
  if k.shape != (B, T, hkv, d) or v.shape != k.shape or do.shape != q.shape or hq % hkv:
    raise ValueError(f"bad shapes q {q.shape} k {k.shape} v {v.shape} do {do.shape}")
  why = unsupported(T, T, d, q.dtype, config=config)
  if why:
    raise ValueError(why)
  sc = d ** -0.5 if scale is None else scale
  return B, T, hq, hkv, d, hq // hkv, sc, sc * math.log2(math.e)


@functools.partial(jax.jit, static_argnames=("spec", "config", "scale"))
def sparse_attention_dkv(q, k, v, do, lse2, delta, spec: AttentionSpec,
                         config: MosaicBwdConfig = MosaicBwdConfig(), scale: float | None = None,
                         segment_ids=None, kv_segment_ids=None):
  """(dk, dv), shaped and typed like k and v.

  Args: q, do [B, T, Hq, D]; k, v [B, T, Hkv, D]; lse2 [B, Hq, T] fp32 base-2 log-sum-exp of
  the scaled scores (``+inf`` where a row sees nothing); delta [B, Hq, T] fp32, rowsum(dO * O)
  (minus the lse cotangent when there is one); segment ids [B, T] integers (packed rows; both or
  neither): cross-document tiles are skipped, straddling ones masked (``pallas_gpu_mosaic``'s
  ``Segments``).
  """
  return _dkv(q, k, v, do, lse2, delta, spec, config, scale, segment_ids, kv_segment_ids,
              fused=False)


@functools.partial(jax.jit, static_argnames=("spec", "config", "scale"))
def sparse_attention_bwd(q, k, v, do, lse2, delta, spec: AttentionSpec,
                         config: MosaicBwdConfig = MosaicBwdConfig(), scale: float | None = None,
                         segment_ids=None, kv_segment_ids=None):
  """(dq, dk, dv) in one pass (FA3's structure; ``bwd_impl="auto"``'s choice: with ``rederive``
  4-21% faster than the two kernels at 64K on an H100): the dK/dV kernel also computes
  dQ_tile = dS K from dS in shared memory and adds it into a zero-initialised fp32 accumulator
  in global memory with a TMA reduce-add, so a visited tile costs 5 matmuls instead of 7.
  Arguments as ``sparse_attention_dkv``. dQ summed with atomics is not bit-reproducible from
  run to run, as in FA3 and FA4."""
  return _dkv(q, k, v, do, lse2, delta, spec, config, scale, segment_ids, kv_segment_ids,
              fused=True)


def gradients(q, k, v, do, lse2, delta, spec: AttentionSpec,
              config: MosaicBwdConfig = MosaicBwdConfig(), *, fused: bool, **kw):
  """(dq, dk, dv): ``sparse_attention_bwd`` if ``fused``, else ``sparse_attention_dq`` and
  ``sparse_attention_dkv`` (arguments as theirs; ``kw``: scale, segment ids)."""
  if fused:
    return sparse_attention_bwd(q, k, v, do, lse2, delta, spec, config, **kw)
  return (sparse_attention_dq(q, k, v, do, lse2, delta, spec, config, **kw),
          *sparse_attention_dkv(q, k, v, do, lse2, delta, spec, config, **kw))


def _dkv(q, k, v, do, lse2, delta, spec, config, scale, segment_ids, kv_segment_ids, *,
         fused: bool):
  """The dK/dV kernel (module docstring); ``fused`` adds dQ (``sparse_attention_bwd``)."""
  B, T, hq, hkv, d, g, sc, c = _check(q, k, v, do, config, scale)
  seg = segment_args(segment_ids, kv_segment_ids, B, T, T)
  dtype = q.dtype
  bq, bkv, mcs = config.block_q, config.block_kv, config.max_concurrent_steps
  # fused: each compute warpgroup computes half of dQ's columns from both warpgroups' dS, so
  # K's column halves must be whole swizzle tiles: 128-byte swizzle where d % 128 == 0, else 64.
  swz = 128 if d % 128 == 0 or not fused else 64
  tile = swz // jnp.dtype(dtype).itemsize
  dh = d // 2
  if fused and bq % tile:
    raise ValueError(f"the fused Mosaic backward needs block_q a multiple of {tile} (dS is staged "
                     f"in (8, {tile})-tiled shared memory), not {bq}")
  q_seg, kv_seg = seg or (None, None)   # dK/dV's rows are keys, its entries query blocks
  tab = visit_table(kernel_tables(spec, T, T, bq, 2 * bkv).bwd, kv_seg, q_seg, 2 * bkv, bq)

  def kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, seg_refs, dq_acc_ref, dk_ref,
             dv_ref, scoped):
    batch = lax.axis_index("batch")
    q_head = lax.axis_index("heads")
    row = lax.axis_index("kv_seq")
    wg = lax.axis_index("wg")
    ((k_smem2, v_smem2, q_smem, do_smem, lse_smem, dl_smem, *dq_smem),
     (k_bar, v_bar), (q_bar, do_bar, lse_bar, dl_bar), used, *ds_bar) = scoped[:4 + fused]
    sg = Segments.of(seg_refs, scoped[4 + fused:])
    visit = visit_reader(tab_ref, batch, row)
    n_full, n_tot = visit(0), visit(1)

    @pl.when(wg < 2)
    def _compute():
      plgpu.set_max_registers(config.registers[0], action="increase")
      k_smem = k_smem_wg = k_smem2.at[wg]
      v_smem = v_smem_wg = v_smem2.at[wg]
      kv_head = lax.div(q_head, jnp.array(g, q_head.dtype))
      kv_base = row * (2 * bkv) + wg * bkv
      src = (batch, pl.ds(kv_base, bkv), kv_head)
      plgpu.copy_gmem_to_smem(k_ref.at[src], k_smem, k_bar.at[wg])
      plgpu.copy_gmem_to_smem(v_ref.at[src], v_smem, v_bar.at[wg])
      plgpu.barrier_wait(k_bar.at[wg])
      plgpu.barrier_wait(v_bar.at[wg])
      kseg = None if sg is None else sg.load_own(batch, wg, pl.ds(kv_base, bkv))
      dk = plgpu.layout_cast(jnp.full((bkv, d), 0, jnp.float32), plgpu.Layout.WGMMA)
      dv = plgpu.layout_cast(jnp.full((bkv, d), 0, jnp.float32), plgpu.Layout.WGMMA)

      def step(e, carry, masked):
        dk, dv = carry
        slot = lax.rem(e, jnp.array(mcs, e.dtype))
        qb = visit(e + 2) if fused or config.rederive else None   # fused: dQ's rows
        k_smem, v_smem, opaque = k_smem_wg, v_smem_wg, lambda x: x
        if config.rederive:   # + 0 at run time (entries are >= 0), but not to LLVM: the refs
          zero = jnp.where(qb < 0, 1, 0).astype(wg.dtype)   # and offsets are recomputed
          opaque = lambda x: x + zero                        # each step, not held across it
          k_smem, v_smem = k_smem2.at[opaque(wg)], v_smem2.at[opaque(wg)]
        plgpu.barrier_wait(q_bar.at[slot])
        plgpu.barrier_wait(lse_bar.at[slot])
        qseg = None if sg is None else sg.ring(slot, masked)
        plgpu.barrier_wait(do_bar.at[slot])

        def s_dp_fn(refs):   # sT = K Qᵀ and dPᵀ = V dOᵀ in one wgmma group: one wait for both
          s_ref, dp_ref = refs
          plgpu.wgmma(s_ref, k_smem, plgpu.transpose_ref(q_smem.at[slot], (1, 0)))
          plgpu.wgmma(dp_ref, v_smem, plgpu.transpose_ref(do_smem.at[slot], (1, 0)))
        z = plgpu.layout_cast(jnp.full((bkv, bq), 0, jnp.float32), plgpu.Layout.WGMMA)
        s_t, dp_t = pl.run_state(s_dp_fn)((plgpu.ACC.init(z), plgpu.ACC.init(z)))
        lse = plgpu.load(lse_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
        p_t = jnp.exp2(s_t * c - lax.broadcast_in_dim(lse, (bkv, bq), [1]))
        if masked:
          qb = visit(e + 2) if qb is None else qb
          ki = plgpu.broadcasted_iota(jnp.int32, (bkv, bq), 0, layout=plgpu.Layout.WGMMA)
          qi = plgpu.broadcasted_iota(jnp.int32, (bkv, bq), 1, layout=plgpu.Layout.WGMMA)
          ok = spec.allowed(qi + opaque(qb * bq), ki + opaque(kv_base), xp=jnp)
          if sg is not None:
            ok &= sg.same(kseg, qseg, (bkv, bq))
          p_t = jnp.where(ok, p_t, 0.0)
        plgpu.barrier_wait(dl_bar.at[slot])
        dl = plgpu.load(dl_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
        ds_t = p_t * (dp_t - lax.broadcast_in_dim(dl, (bkv, bq), [1]))
        dv_acc = plgpu.ACC.init(dv)   # dV += Pᵀ dO goes in the same group as dK

        if not fused:
          def dk_dv_fn(refs):
            dk_ref, dv_ref = refs
            plgpu.wgmma(dk_ref, ds_t.astype(dtype), q_smem.at[slot])
            plgpu.wgmma(dv_ref, p_t.astype(dtype), do_smem.at[slot])
          dk, dv = pl.run_state(dk_dv_fn)((plgpu.ACC.init(dk), dv_acc))
          plgpu.barrier_arrive(used.at[slot])
          return dk, dv
        # dS goes to shared memory, double-buffered by tile parity: this warpgroup's dSᵀ for
        # tile e + 2 may be written only after the other one's dQ of tile e has read it, which
        # the pairing below guarantees (the other one arrives for e + 1 after that dQ).
        buf = lax.rem(e, jnp.array(2, e.dtype))
        ds_all, dq_stage = dq_smem[0].at[buf], dq_smem[1].at[wg]
        ds_smem = ds_all.at[wg]
        ds_smem[...] = ds_t.astype(dtype)
        plgpu.commit_smem()
        plgpu.barrier_arrive(ds_bar[0].at[buf])
        cols = pl.ds(wg * dh, dh)

        def dk_dq_fn(refs):
          dk_ref, dq_ref, dv_ref = refs
          plgpu.wgmma(dk_ref, ds_smem, q_smem.at[slot])   # dK += dSᵀ Q with this warpgroup's dS
          plgpu.wgmma(dv_ref, p_t.astype(dtype), do_smem.at[slot])
          # Once both warpgroups' dS are in shared memory, this warpgroup's half of dQ_tile's
          # columns: dS K over all 2 * block_kv keys.
          plgpu.barrier_wait(ds_bar[0].at[buf])
          for j in range(2):
            plgpu.wgmma(dq_ref, plgpu.transpose_ref(ds_all.at[j], (1, 0)),
                        k_smem2.at[j].at[:, cols])
        dq_zeros = plgpu.layout_cast(jnp.full((bq, dh), 0, jnp.float32), plgpu.Layout.WGMMA)
        dk, dq_tile, dv = pl.run_state(dk_dq_fn)(
            (plgpu.ACC.init(dk), plgpu.ACC.init(dq_zeros), dv_acc))
        plgpu.barrier_arrive(used.at[slot])
        # The previous tile's reduce-add must have read the staging buffer before it is reused.
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        dq_stage[...] = dq_tile
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(dq_stage, dq_acc_ref.at[batch, pl.ds(qb * bq, bq), q_head, cols],
                                reduction_op="add")
        return dk, dv

      carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), (dk, dv))
      dk, dv = lax.fori_loop(n_full, n_tot, functools.partial(step, masked=True), carry)
      if fused:   # the other warpgroup's last dQ reads this one's K: pair up once more (as for
        end = lax.rem(n_tot, jnp.array(2, n_tot.dtype))   # an entry n_tot) before dK takes K's
        plgpu.barrier_arrive(ds_bar[0].at[end])            # buffer
        plgpu.barrier_wait(ds_bar[0].at[end])
      k_smem[...] = (dk * sc).astype(dtype)
      v_smem[...] = dv.astype(dtype)
      plgpu.commit_smem()
      dst = (batch, pl.ds(kv_base, bkv), q_head)
      plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[dst])
      plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[dst])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory():
      plgpu.set_max_registers(config.registers[1], action="decrease")

      def issue(e, slot):
        qb = visit(e + 2)
        rows = pl.ds(qb * bq, bq)
        plgpu.copy_gmem_to_smem(q_ref.at[batch, rows, q_head], q_smem.at[slot], q_bar.at[slot])
        plgpu.copy_gmem_to_smem(lse_ref.at[batch, q_head, rows], lse_smem.at[slot],
                                lse_bar.at[slot])
        plgpu.copy_gmem_to_smem(do_ref.at[batch, rows, q_head], do_smem.at[slot],
                                do_bar.at[slot])
        plgpu.copy_gmem_to_smem(dl_ref.at[batch, q_head, rows], dl_smem.at[slot],
                                dl_bar.at[slot])
        if sg is not None:
          sg.issue(batch, rows, slot)

      feed_ring(n_tot, mcs, issue, (used,))

  def entry(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, *refs):
    seg_refs, refs = (refs[:2], refs[2:]) if seg else (None, refs)
    dq_acc_ref, dk_ref, dv_ref = refs if fused else (None, *refs)
    sm = functools.partial(tiled_smem, dtype=dtype, swizzle=swz)
    scratch = (sm((2, bkv, d)), sm((2, bkv, d)), sm((mcs, bq, d)), sm((mcs, bq, d)),
               plgpu.SMEM((mcs, bq), jnp.float32), plgpu.SMEM((mcs, bq), jnp.float32))
    if fused:   # dSᵀ (2 tile parities x 2 warpgroups), and each warpgroup's fp32 dQ staging
      scratch += (sm((2, 2, bkv, bq)), tiled_smem((2, bq, dh), jnp.float32, swizzle=swz))
    pl.run_scoped(
        lambda *a: kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, seg_refs,
                          dq_acc_ref, dk_ref, dv_ref, a),
        scratch,
        (plgpu.Barrier(num_barriers=2),) * 2,
        (plgpu.Barrier(num_barriers=mcs),) * 4,
        plgpu.Barrier(num_arrivals=2, num_barriers=mcs),
        # fused: both warpgroups' dS of a tile are in shared memory (per tile parity)
        *((plgpu.Barrier(num_arrivals=2, num_barriers=2),) if fused else ()),
        *(Segments.scratch(bkv, mcs, bq) if seg else ()),
        collective_axes="wg",
    )

  per_head = jax.ShapeDtypeStruct((B, T, hq, d), dtype)
  grid, names = (hq, T // (2 * bkv), B), ("heads", "kv_seq", "batch")
  args = (q, k, v, do, lse2, delta, tab, *((kv_seg, q_seg) if seg else ()))
  if fused:
    # ``pl.kernel`` rather than ``plgpu.kernel`` (``launch``): the latter's batching wrapper does
    # not take a mutable array operand. ``pl.kernel`` aliases it in and out of the kernel.
    dq_acc = jax.new_ref(jnp.zeros((B, T, hq, d), jnp.float32))
    mesh = plgpu.Mesh(grid=grid, grid_names=names, num_threads=3, thread_name="wg")
    dk_h, dv_h = pl.kernel(entry, out_type=[per_head, per_head], mesh=mesh,
                           compiler_params=plgpu.CompilerParams(approx_math=True))(*args, dq_acc)
  else:
    dk_h, dv_h = launch(entry, [per_head, per_head], grid, names, *args)
  if g > 1:   # one dK/dV per query head: sum each group in fp32
    dk_h, dv_h = (x.reshape(B, T, hkv, g, d).astype(jnp.float32).sum(axis=3).astype(dtype)
                  for x in (dk_h, dv_h))
  if not fused:
    return dk_h, dv_h
  return (jax.freeze(dq_acc) * sc).astype(dtype), dk_h, dv_h


@functools.partial(jax.jit, static_argnames=("spec", "config", "scale"))
def sparse_attention_dq(q, k, v, do, lse2, delta, spec: AttentionSpec,
                        config: MosaicBwdConfig = MosaicBwdConfig(), scale: float | None = None,
                        segment_ids=None, kv_segment_ids=None):
  """dq, shaped and typed like q (arguments as ``sparse_attention_dkv``).

  The forward's structure: per CTA two compute warpgroups hold ``block_q`` query rows each (Q,
  dO, lse and delta loaded once); the memory warpgroup streams the K/V tiles of the CTA's
  full-first list (``kernel_tables(...).fwd`` for ``2 * block_q`` rows, ``block_kv`` keys per
  tile). Per tile: s = Q Kᵀ, p = exp2(c·s − lse), dP = dO Vᵀ, dS = p (dP − delta), dQ += dS K.
  """
  B, T, hq, hkv, d, g, sc, c = _check(q, k, v, do, config, scale)
  seg = segment_args(segment_ids, kv_segment_ids, B, T, T)
  dtype = q.dtype
  bq, bkv, mcs = config.block_q, config.block_kv, config.max_concurrent_steps
  tab = visit_table(kernel_tables(spec, T, T, 2 * bq, bkv).fwd, *(seg or (None, None)), 2 * bq,
                    bkv)

  def kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, seg_refs, dq_ref, scoped):
    batch = lax.axis_index("batch")
    q_head = lax.axis_index("heads")
    row = lax.axis_index("q_seq")
    wg = lax.axis_index("wg")
    ((q_smem2, do_smem2, lse_smem2, dl_smem2, k_smem, v_smem),
     (q_bar, do_bar, lse_bar, dl_bar), (k_bar, v_bar), (k_used, v_used)) = scoped[:4]
    sg = Segments.of(seg_refs, scoped[4:])
    visit = visit_reader(tab_ref, batch, row)
    n_full, n_tot = visit(0), visit(1)

    @pl.when(wg < 2)
    def _compute():
      plgpu.set_max_registers(config.registers[0], action="increase")
      q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]
      q_base = row * (2 * bq) + wg * bq
      rows = pl.ds(q_base, bq)
      plgpu.copy_gmem_to_smem(q_ref.at[batch, rows, q_head], q_smem, q_bar.at[wg])
      plgpu.copy_gmem_to_smem(do_ref.at[batch, rows, q_head], do_smem, do_bar.at[wg])
      plgpu.copy_gmem_to_smem(lse_ref.at[batch, q_head, rows], lse_smem2.at[wg], lse_bar.at[wg])
      plgpu.copy_gmem_to_smem(dl_ref.at[batch, q_head, rows], dl_smem2.at[wg], dl_bar.at[wg])
      for bar in (q_bar, do_bar, lse_bar, dl_bar):
        plgpu.barrier_wait(bar.at[wg])
      lse = plgpu.load(lse_smem2.at[wg], (), layout=plgpu.Layout.WGMMA.reduce(1))
      dl = plgpu.load(dl_smem2.at[wg], (), layout=plgpu.Layout.WGMMA.reduce(1))
      qseg = None if sg is None else sg.load_own(batch, wg, rows)
      dq = plgpu.layout_cast(jnp.full((bq, d), 0, jnp.float32), plgpu.Layout.WGMMA)

      def step(e, dq, masked):
        slot = lax.rem(e, jnp.array(mcs, e.dtype))
        plgpu.barrier_wait(k_bar.at[slot])

        def s_fn(acc_ref):
          plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
          return acc_ref[...]
        s = pl.run_scoped(s_fn, plgpu.ACC((bq, bkv), jnp.float32))
        kseg = None if sg is None else sg.ring(slot, masked)
        p = jnp.exp2(s * c - lax.broadcast_in_dim(lse, (bq, bkv), [0]))
        if masked:
          kb = visit(e + 2)
          qi = plgpu.broadcasted_iota(jnp.int32, (bq, bkv), 0, layout=plgpu.Layout.WGMMA)
          ki = plgpu.broadcasted_iota(jnp.int32, (bq, bkv), 1, layout=plgpu.Layout.WGMMA)
          ok = spec.allowed(qi + q_base, ki + kb * bkv, xp=jnp)
          if sg is not None:
            ok &= sg.same(qseg, kseg, (bq, bkv))
          p = jnp.where(ok, p, 0.0)
        plgpu.barrier_wait(v_bar.at[slot])

        def dp_fn(acc_ref):
          plgpu.wgmma(acc_ref, do_smem, plgpu.transpose_ref(v_smem.at[slot], (1, 0)))
          return acc_ref[...]
        dp = pl.run_scoped(dp_fn, plgpu.ACC((bq, bkv), jnp.float32))
        plgpu.barrier_arrive(v_used.at[slot])
        ds = p * (dp - lax.broadcast_in_dim(dl, (bq, bkv), [0]))

        def dq_fn(acc_ref):
          plgpu.wgmma(acc_ref, ds.astype(dtype), k_smem.at[slot])
        dq = pl.run_state(dq_fn)(plgpu.ACC.init(dq))
        plgpu.barrier_arrive(k_used.at[slot])
        return dq

      dq = lax.fori_loop(0, n_full, functools.partial(step, masked=False), dq)
      dq = lax.fori_loop(n_full, n_tot, functools.partial(step, masked=True), dq)
      q_smem[...] = (dq * sc).astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[batch, rows, q_head])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory():
      plgpu.set_max_registers(config.registers[1], action="decrease")
      stream_kv((k_ref, v_ref), (k_smem, v_smem), (k_bar, v_bar), (k_used, v_used), visit,
                batch=batch, kv_head=lax.div(q_head, jnp.array(g, q_head.dtype)),
                n_tot=n_tot, bkv=bkv, mcs=mcs, seg=sg)

  def entry(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, *refs):
    seg_refs, (dq_ref,) = (refs[:2], refs[2:]) if seg else (None, refs)
    scratch = (tiled_smem((2, bq, d), dtype), tiled_smem((2, bq, d), dtype),
               plgpu.SMEM((2, bq), jnp.float32), plgpu.SMEM((2, bq), jnp.float32),
               tiled_smem((mcs, bkv, d), dtype), tiled_smem((mcs, bkv, d), dtype))
    pl.run_scoped(
        lambda *a: kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, seg_refs, dq_ref,
                          a),
        scratch,
        (plgpu.Barrier(num_barriers=2),) * 4,
        (plgpu.Barrier(num_barriers=mcs),) * 2,
        (plgpu.Barrier(num_arrivals=2, num_barriers=mcs),) * 2,
        *(Segments.scratch(bq, mcs, bkv) if seg else ()),
        collective_axes="wg",
    )

  return launch(entry, jax.ShapeDtypeStruct(q.shape, dtype), (hq, T // (2 * bq), B),
                ("heads", "q_seq", "batch"), q, k, v, do, lse2, delta, tab, *(seg or ()))
