"""Single-pass block-sparse attention backward in Pallas Mosaic GPU (FA3's structure).

``pallas_gpu_mosaic_bwd`` runs two kernels (dQ, then dK/dV), each recomputing S and P: 7 matmuls
per visited tile. FlashAttention-4's Sm90 backward runs one kernel with 5, adding dQ into an fp32
accumulator in global memory with bulk reduce-adds. On an H200 that is why its backward time is
1.13-1.31x shorter than ours although our kernels are faster per matmul (docs/benchmarks.md,
"Issue 14"). This module is that one kernel, on ``pallas_gpu_mosaic_bwd.sparse_attention_dkv``:
- A CTA owns ``2 * block_kv`` keys of one query head: two compute warpgroups hold ``block_kv``
  keys each (K, V in shared memory for the whole kernel). A memory warpgroup streams Q, dO, the
  base-2 lse and delta along the CTA's query-block list (``kernel_tables(...).bwd``).
- Per query tile, each compute warpgroup:
  - sT = K Qᵀ, pT = exp2(c·sT − lse) (``spec.allowed`` on the partial entries);
  - dV += pT dO and dPᵀ = V dOᵀ, then dSᵀ = pT (dPᵀ − delta), written to shared memory;
  - dK += dSᵀ Q and dQ_tile = dS K, both with dS from shared memory;
  - dQ_tile goes to an fp32 staging buffer and is added into the global fp32 dQ accumulator with
    a TMA reduce-add (``copy_smem_to_gmem(..., reduction_op="add")``). The two warpgroups, and
    every CTA whose keys the query tile sees, add into the same rows; the adds are atomic.
- The accumulator is a zero-initialised mutable array passed to the kernel; dQ = scale × it.

Opt-in through ``TritonConfig(bwd_impl="mosaic_fused")``. It lowers to Mosaic GPU on CPU
(``tests/test_attention_pallas_gpu.py -k fused``); its numerics are checked on a GPU by
``tests/gpu/test_gpu_pallas_gpu.py -k fused``. It has not run on a GPU yet: it becomes the
default only after that test passes and ``benchmarks/attention.py`` (row
``pallas_gpu_fused_bwd``) measures it faster than the two-kernel backward.

dQ summed with atomics is not bit-reproducible from run to run (the order of the adds varies),
as in FA3 and FA4. Limits: those of ``pallas_gpu_mosaic_bwd`` (``unsupported``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.backends.gpu_tables import kernel_tables
from pallas_kernels.backends.pallas_gpu_mosaic import feed_ring, tiled_smem
from pallas_kernels.backends.pallas_gpu_mosaic_bwd import MosaicBwdConfig, _check
from pallas_kernels.spec import AttentionSpec


@functools.partial(jax.jit, static_argnames=("spec", "config", "scale"))
def sparse_attention_bwd(q, k, v, do, lse2, delta, spec: AttentionSpec,
                         config: MosaicBwdConfig = MosaicBwdConfig(), scale: float | None = None):
  """(dq, dk, dv), shaped and typed like q, k and v; arguments as
  ``pallas_gpu_mosaic_bwd.sparse_attention_dkv``."""
  B, T, hq, hkv, d, g, sc, c = _check(q, k, v, do, config, scale)
  dtype = q.dtype
  bq, bkv, mcs = config.block_q, config.block_kv, config.max_concurrent_steps
  tab = jnp.asarray(kernel_tables(spec, T, T, bq, 2 * bkv).bwd)

  def kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, dq_acc_ref, dk_ref, dv_ref,
             scoped):
    batch = lax.axis_index("batch")
    q_head = lax.axis_index("heads")
    row = lax.axis_index("kv_seq")
    wg = lax.axis_index("wg")
    ((k_smem2, v_smem2, ds_smem2, dq_stage2, q_smem, do_smem, lse_smem, dl_smem),
     (k_bar, v_bar), (q_bar, do_bar, lse_bar, dl_bar), used) = scoped
    n_full, n_tot = tab_ref[row, 0], tab_ref[row, 1]

    @pl.when(wg < 2)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
      ds_smem, dq_stage = ds_smem2.at[wg], dq_stage2.at[wg]
      kv_head = lax.div(q_head, jnp.array(g, q_head.dtype))
      kv_base = row * (2 * bkv) + wg * bkv
      src = (batch, pl.ds(kv_base, bkv), kv_head)
      plgpu.copy_gmem_to_smem(k_ref.at[src], k_smem, k_bar.at[wg])
      plgpu.copy_gmem_to_smem(v_ref.at[src], v_smem, v_bar.at[wg])
      plgpu.barrier_wait(k_bar.at[wg])
      plgpu.barrier_wait(v_bar.at[wg])
      dk = plgpu.layout_cast(jnp.full((bkv, d), 0, jnp.float32), plgpu.Layout.WGMMA)
      dv = plgpu.layout_cast(jnp.full((bkv, d), 0, jnp.float32), plgpu.Layout.WGMMA)

      def step(e, carry, masked):
        dk, dv = carry
        slot = lax.rem(e, jnp.array(mcs, e.dtype))
        qb = tab_ref[row, e + 2]
        plgpu.barrier_wait(q_bar.at[slot])
        plgpu.barrier_wait(lse_bar.at[slot])

        def st_fn(acc_ref):
          plgpu.wgmma(acc_ref, k_smem, plgpu.transpose_ref(q_smem.at[slot], (1, 0)))
          return acc_ref[...]
        s_t = pl.run_scoped(st_fn, plgpu.ACC((bkv, bq), jnp.float32))
        lse = plgpu.load(lse_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
        p_t = jnp.exp2(s_t * c - lax.broadcast_in_dim(lse, (bkv, bq), [1]))
        if masked:
          ki = plgpu.broadcasted_iota(jnp.int32, (bkv, bq), 0, layout=plgpu.Layout.WGMMA)
          qi = plgpu.broadcasted_iota(jnp.int32, (bkv, bq), 1, layout=plgpu.Layout.WGMMA)
          p_t = jnp.where(spec.allowed(qi + qb * bq, ki + kv_base, xp=jnp), p_t, 0.0)
        plgpu.barrier_wait(do_bar.at[slot])

        def dv_dp_fn(refs):   # two wgmma in one scope: one wait for both
          dv_ref, dp_ref = refs
          plgpu.wgmma(dv_ref, p_t.astype(dtype), do_smem.at[slot])
          plgpu.wgmma(dp_ref, v_smem, plgpu.transpose_ref(do_smem.at[slot], (1, 0)))
        zeros = plgpu.layout_cast(jnp.full((bkv, bq), 0, jnp.float32), plgpu.Layout.WGMMA)
        dv, dp_t = pl.run_state(dv_dp_fn)((plgpu.ACC.init(dv), plgpu.ACC.init(zeros)))
        plgpu.barrier_wait(dl_bar.at[slot])
        dl = plgpu.load(dl_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
        ds_smem[...] = (p_t * (dp_t - lax.broadcast_in_dim(dl, (bkv, bq), [1]))).astype(dtype)
        plgpu.commit_smem()

        def dk_dq_fn(refs):   # dK += dSᵀ Q and dQ_tile = dS K, dS from shared memory
          dk_ref, dq_ref = refs
          plgpu.wgmma(dk_ref, ds_smem, q_smem.at[slot])
          plgpu.wgmma(dq_ref, plgpu.transpose_ref(ds_smem, (1, 0)), k_smem)
        dq_zeros = plgpu.layout_cast(jnp.full((bq, d), 0, jnp.float32), plgpu.Layout.WGMMA)
        dk, dq_tile = pl.run_state(dk_dq_fn)((plgpu.ACC.init(dk), plgpu.ACC.init(dq_zeros)))
        plgpu.barrier_arrive(used.at[slot])
        # The previous tile's reduce-add must have read the staging buffer before it is reused.
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        dq_stage[...] = dq_tile
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(dq_stage, dq_acc_ref.at[batch, pl.ds(qb * bq, bq), q_head],
                                reduction_op="add")
        return dk, dv

      carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), (dk, dv))
      dk, dv = lax.fori_loop(n_full, n_tot, functools.partial(step, masked=True), carry)
      k_smem[...] = (dk * sc).astype(dtype)
      v_smem[...] = dv.astype(dtype)
      plgpu.commit_smem()
      dst = (batch, pl.ds(kv_base, bkv), q_head)
      plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[dst])
      plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[dst])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory():
      plgpu.set_max_registers(40, action="decrease")

      def issue(e, slot):
        qb = tab_ref[row, e + 2]
        rows = pl.ds(qb * bq, bq)
        plgpu.copy_gmem_to_smem(q_ref.at[batch, rows, q_head], q_smem.at[slot], q_bar.at[slot])
        plgpu.copy_gmem_to_smem(lse_ref.at[batch, q_head, rows], lse_smem.at[slot],
                                lse_bar.at[slot])
        plgpu.copy_gmem_to_smem(do_ref.at[batch, rows, q_head], do_smem.at[slot],
                                do_bar.at[slot])
        plgpu.copy_gmem_to_smem(dl_ref.at[batch, q_head, rows], dl_smem.at[slot],
                                dl_bar.at[slot])

      feed_ring(n_tot, mcs, issue, (used,))

  def entry(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, dq_acc_ref, dk_ref, dv_ref):
    scratch = (tiled_smem((2, bkv, d), dtype), tiled_smem((2, bkv, d), dtype),
               tiled_smem((2, bkv, bq), dtype), plgpu.SMEM((2, bq, d), jnp.float32),
               tiled_smem((mcs, bq, d), dtype), tiled_smem((mcs, bq, d), dtype),
               plgpu.SMEM((mcs, bq), jnp.float32), plgpu.SMEM((mcs, bq), jnp.float32))
    pl.run_scoped(
        lambda *a: kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, tab_ref, dq_acc_ref,
                          dk_ref, dv_ref, a),
        scratch,
        (plgpu.Barrier(num_barriers=2),) * 2,
        (plgpu.Barrier(num_barriers=mcs),) * 4,
        plgpu.Barrier(num_arrivals=2, num_barriers=mcs),
        collective_axes="wg",
    )

  # ``pl.kernel`` rather than ``plgpu.kernel`` (``launch``): the latter's batching wrapper does
  # not take a mutable array operand. ``pl.kernel`` aliases it in and out of the kernel.
  dq_acc = jax.new_ref(jnp.zeros((B, T, hq, d), jnp.float32))
  per_head = jax.ShapeDtypeStruct((B, T, hq, d), dtype)
  mesh = plgpu.Mesh(grid=(hq, T // (2 * bkv), B), grid_names=("heads", "kv_seq", "batch"),
                    num_threads=3, thread_name="wg")
  dk_h, dv_h = pl.kernel(entry, out_type=[per_head, per_head], mesh=mesh,
                         compiler_params=plgpu.CompilerParams(approx_math=True))(
                             q, k, v, do, lse2, delta, tab, dq_acc)
  dq = (jax.freeze(dq_acc) * sc).astype(dtype)
  if g == 1:
    return dq, dk_h, dv_h

  def group_sum(x):
    return x.reshape(B, T, hkv, g, d).astype(jnp.float32).sum(axis=3).astype(dtype)
  return dq, group_sum(dk_h), group_sum(dv_h)
