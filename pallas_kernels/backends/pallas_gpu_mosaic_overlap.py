"""Block-sparse attention forward in Pallas Mosaic GPU with intra-warpgroup overlap (opt-in).

``pallas_gpu_mosaic.sparse_attention_fwd`` runs, per compute warpgroup and tile: S = Q Kᵀ (wait),
softmax, P V (wait). The softmax leaves the tensor cores to the other warpgroup only. On an
H200 its dense forward reaches 604 TFLOP/s against FlashAttention-4's 647 (docs/benchmarks.md,
"Issue 14"). FA4's Sm90 forward also overlaps work inside each warpgroup
(``intra_wg_overlap=True`` in ``flash_fwd_sm90.py``): it issues S for tile e and P V for tile
e − 1 back to back, and runs tile e's softmax while P V is still in flight. This module is that
schedule, on the same tables, ring and memory warpgroup:
- prologue (tile 0): S₀, softmax → P₀;
- step e ≥ 1: wgmma S_e = Q K_eᵀ and O += P_{e−1} V_{e−1}; wait for S_e only
  (``wgmma_accumulator_load(..., wait_n=1)``); the softmax of S_e; wait for P V; rescale O;
- epilogue: O += P_last V_last.
Both accumulators (O and S) live in one ``pl.run_scoped`` around the loops. The two warpgroups
take turns issuing their wgmma pair through a schedule barrier. The outputs (out, base-2 lse)
and limits are ``pallas_gpu_mosaic``'s.

Opt-in through ``TritonConfig(fwd_impl="mosaic_overlap")``. Written 2026-12-04, it lowers to
Mosaic GPU on CPU (``tests/test_attention_pallas_gpu.py -k overlap``) and has not run on a GPU:
``tests/gpu/test_gpu_pallas_gpu.py -k overlap`` checks it against the dense reference and
``benchmarks/attention.py`` times it (rows ``pallas_gpu_overlap_fwd``). It becomes the default
forward only if both say so.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.backends.gpu_tables import kernel_tables
from pallas_kernels.backends.pallas_gpu_mosaic import (M_INIT, MosaicConfig, fwd_step, launch,
                                                      shape_limits, stream_kv, tiled_smem)
from pallas_kernels.spec import AttentionSpec


@functools.partial(jax.jit, static_argnames=("spec", "config", "scale"))
def sparse_attention_fwd(q, k, v, spec: AttentionSpec, config: MosaicConfig = MosaicConfig(),
                         scale: float | None = None):
  """Returns (out [B, T, Hq, D], lse2 [B, Hq, T] base-2), as ``pallas_gpu_mosaic``'s."""
  B, T, hq, d = q.shape
  hkv = k.shape[2]
  dtype = q.dtype
  if k.shape != (B, T, hkv, d) or v.shape != k.shape or hq % hkv:
    raise ValueError(f"bad shapes q {q.shape} k {k.shape} v {v.shape}")
  why = shape_limits(T, T, d, dtype, step=fwd_step(config))
  if why:
    raise ValueError(f"the Mosaic forward cannot take {why}")
  bq, bkv, mcs = config.block_q, config.block_kv, config.max_concurrent_steps
  g = hq // hkv
  tab = jnp.asarray(kernel_tables(spec, T, T, 2 * bq, bkv).fwd)
  c = (d ** -0.5 if scale is None else scale) * math.log2(math.e)

  def kernel(q_ref, k_ref, v_ref, tab_ref, out_ref, lse_ref, scoped):
    batch = lax.axis_index("batch")
    q_head = lax.axis_index("heads")
    row = lax.axis_index("q_seq")
    (qo_smem2, k_smem, v_smem, lse_smem2), (k_bar, v_bar, q_bar), (k_used, v_used), sched = scoped
    wg = lax.axis_index("wg")
    n_full, n_tot = tab_ref[row, 0], tab_ref[row, 1]
    n_pro = jnp.minimum(n_tot, 1)        # 1 when the row block sees any tile: prologue, epilogue

    def schedule_barrier():
      plgpu.barrier_arrive(sched)
      plgpu.barrier_wait(sched)

    def slot_of(e):
      return lax.rem(e, jnp.array(mcs, e.dtype))

    @pl.when(wg < 2)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      qo_smem, lse_smem = qo_smem2.at[wg], lse_smem2.at[wg]
      q_base = row * (2 * bq) + wg * bq
      plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(q_base, bq), q_head], qo_smem, q_bar.at[wg])
      plgpu.barrier_wait(q_bar.at[wg])
      zeros_s = plgpu.layout_cast(jnp.full((bq, bkv), 0, jnp.float32), plgpu.Layout.WGMMA)
      zeros_o = plgpu.layout_cast(jnp.full((bq, d), 0, jnp.float32), plgpu.Layout.WGMMA)

      def softmax(s, e, m_i, l_i, masked):
        """(p16, m_new, l_new, alpha) of tile ``e``'s scores."""
        if masked:
          kb = tab_ref[row, e + 2]
          qi = plgpu.broadcasted_iota(jnp.int32, (bq, bkv), 0, layout=plgpu.Layout.WGMMA)
          ki = plgpu.broadcasted_iota(jnp.int32, (bq, bkv), 1, layout=plgpu.Layout.WGMMA)
          s = jnp.where(spec.allowed(qi + q_base, ki + kb * bkv, xp=jnp), s, -jnp.inf)
        m_new = jnp.maximum(m_i, s.max(axis=1) * c)
        alpha = jnp.exp2(m_i - m_new)
        p = jnp.exp2(s * c - lax.broadcast_in_dim(m_new, s.shape, [0]))
        l_new = l_i * alpha + p.sum(axis=1)
        return p.astype(dtype), m_new, l_new, alpha

      def body(o_ref, s_ref):
        o_ref[...] = zeros_o
        m_i = plgpu.layout_cast(jnp.full((bq,), M_INIT, jnp.float32),
                                plgpu.Layout.WGMMA.reduce(1))
        l_i = plgpu.layout_cast(jnp.full((bq,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
        p16 = zeros_s.astype(dtype)
        pl.when(wg == 1)(schedule_barrier)

        def prologue(e, carry):     # tile 0 alone; always masked (exact when the tile is full)
          _, m_i, l_i = carry
          plgpu.barrier_wait(k_bar.at[0])
          s_ref[...] = zeros_s
          plgpu.wgmma(s_ref, qo_smem, plgpu.transpose_ref(k_smem.at[0], (1, 0)))
          schedule_barrier()
          s = plgpu.wgmma_accumulator_load(s_ref, wait_n=0)
          plgpu.barrier_arrive(k_used.at[0])
          p16, m_new, l_new, _ = softmax(s, e, m_i, l_i, masked=True)
          return p16, m_new, l_new

        def step(e, carry, masked):
          p_prev, m_i, l_i = carry
          slot, pslot = slot_of(e), slot_of(e - 1)
          plgpu.barrier_wait(k_bar.at[slot])
          s_ref[...] = zeros_s
          plgpu.wgmma(s_ref, qo_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
          plgpu.barrier_wait(v_bar.at[pslot])
          plgpu.wgmma(o_ref, p_prev, v_smem.at[pslot])
          schedule_barrier()
          s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)   # S done, P V still in flight
          plgpu.barrier_arrive(k_used.at[slot])
          p16, m_new, l_new, alpha = softmax(s, e, m_i, l_i, masked)
          o = plgpu.wgmma_accumulator_load(o_ref, wait_n=0)
          plgpu.barrier_arrive(v_used.at[pslot])
          o_ref[...] = o * lax.broadcast_in_dim(alpha, (bq, d), [0])
          return p16, m_new, l_new

        def epilogue(e, p_last):
          last = slot_of(n_tot - 1)
          plgpu.barrier_wait(v_bar.at[last])
          plgpu.wgmma(o_ref, p_last, v_smem.at[last])
          plgpu.wgmma_wait(0)
          plgpu.barrier_arrive(v_used.at[last])
          return p_last

        carry = lax.fori_loop(0, n_pro, prologue, (p16, m_i, l_i))
        carry = lax.fori_loop(1, jnp.maximum(n_full, 1), functools.partial(step, masked=False),
                              carry)
        carry = lax.fori_loop(jnp.maximum(n_full, 1), n_tot, functools.partial(step, masked=True),
                              carry)
        p_last, m_i, l_i = carry
        lax.fori_loop(0, n_pro, epilogue, p_last)
        pl.when(wg == 0)(schedule_barrier)
        return plgpu.wgmma_accumulator_load(o_ref, wait_n=0), m_i, l_i

      acc, m_i, l_i = pl.run_scoped(body, plgpu.ACC((bq, d), jnp.float32),
                                    plgpu.ACC((bq, bkv), jnp.float32))
      seen = l_i > 0
      l_safe = jnp.where(seen, l_i, 1.0)
      acc *= lax.broadcast_in_dim(1.0 / l_safe, (bq, d), [0])
      qo_smem[...] = acc.astype(dtype)
      lse_smem[...] = jnp.where(seen, m_i + jnp.log(l_safe) * (1 / math.log(2)), -jnp.inf)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[batch, pl.ds(q_base, bq), q_head])
      plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[batch, q_head, pl.ds(q_base, bq)])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory():
      plgpu.set_max_registers(40, action="decrease")
      stream_kv((k_ref, v_ref), (k_smem, v_smem), (k_bar, v_bar), (k_used, v_used), tab_ref,
                row=row, batch=batch, kv_head=lax.div(q_head, jnp.array(g, q_head.dtype)),
                n_tot=n_tot, bkv=bkv, mcs=mcs)

  def entry(q_ref, k_ref, v_ref, tab_ref, out_ref, lse_ref):
    scratch = [tiled_smem((2, bq, d), dtype), tiled_smem((mcs, bkv, d), dtype),
               tiled_smem((mcs, bkv, d), dtype), plgpu.SMEM((2, bq), jnp.float32)]
    pl.run_scoped(
        lambda *a: kernel(q_ref, k_ref, v_ref, tab_ref, out_ref, lse_ref, a),
        scratch,
        (plgpu.Barrier(num_barriers=mcs), plgpu.Barrier(num_barriers=mcs),
         plgpu.Barrier(num_barriers=2)),
        (plgpu.Barrier(num_arrivals=2, num_barriers=mcs),) * 2,
        plgpu.Barrier(num_arrivals=2),
        collective_axes="wg",
    )

  return launch(entry, [jax.ShapeDtypeStruct(q.shape, dtype),
                        jax.ShapeDtypeStruct((B, hq, T), jnp.float32)],
                (hq, T // (2 * bq), B), ("heads", "q_seq", "batch"), q, k, v, tab)
