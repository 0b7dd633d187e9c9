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
take turns issuing their wgmma pair through a schedule barrier. Only this compute loop lives
here: checks, tables, the memory warpgroup, the Q load, the epilogue and the launch are
``pallas_gpu_mosaic.forward``'s, so the outputs (out, base-2 lse) and limits are the same.

The memory warpgroup refills K and V separately (``split_release``): V of tile e is released
one step after K, and with one refill after both releases the two warpgroups deadlock on a 2-slot
ring (warpgroup 0 waits for K of tile e + 2, which waits for warpgroup 1's release of V of tile e,
which waits at the schedule barrier for warpgroup 0). Mosaic GPU interpret mode found that on CPU
on 2026-12-05 (``tests/test_mosaic_interpret.py``, which keeps the deadlock as a test).

Opt-in through ``TritonConfig(fwd_impl="mosaic_overlap")``. Written 2026-12-04; on CPU it lowers
to Mosaic GPU (``tests/test_attention_pallas_gpu.py -k overlap``) and matches the dense reference
in Mosaic GPU interpret mode (``tests/test_mosaic_interpret.py``). On an H200 (2026-12-05) it
passes ``tests/gpu/test_gpu_pallas_gpu.py -k overlap`` but is 18-22% slower than the default
forward (``benchmarks/attention.py`` rows ``pallas_gpu_overlap_fwd``, 64K: 438 vs 541 TFLOP/s
sink+window; docs/benchmarks.md, "Issue 14, 2026-12-05"). So it stays opt-in.

Why it was slower (2026-12-07, ``benchmarks/ptxas_offline.py --only fwd_overlap``): not spills
(0 B), but ptxas's note C7513, "wgmma.mma_async instructions are serialized due to non wgmma
instructions defining input registers of a wgmma". The softmax converted P to bf16 while the
previous tile's P V was in flight, and LLVM gave the new P the carried P's registers, i.e. the A
operand of that P V. ptxas then waits after every wgmma, so nothing overlaps. The step now keeps P
in fp32 until P V has been waited for and converts it after (FA3's order: ``convert_type`` after
``warpgroup_wait<0>``). The note is gone for strided, sink+window, full causal and GQA 32/8
(ptxas 13.0, no spills).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.backends.pallas_gpu_mosaic import M_INIT, MosaicConfig, forward, tile_allowed
from pallas_kernels.spec import AttentionSpec


def _overlap_loop(w, rescale_early=False, pin_wait=False):
  """A compute warpgroup's walk with intra-warpgroup overlap (module docstring).
  ``rescale_early``: rescale O by the previous tile's alpha while S is in flight, just before
  P V is issued (FA3's order), instead of after P V has been waited for. ``pin_wait``: store the
  row sums to shared memory just before the P V wait, so that ptxas keeps the wait after the
  softmax (without it ptxas hoists the wait, and the V release, above the softmax: nothing
  overlaps; ``benchmarks/ptxas_offline.py --only fwd_overlap``'s SASS). Both are A/B options
  for ``benchmarks/mosaic_fwd.py``, to be folded in or removed once timed."""
  bq, bkv, d, mcs, dtype, c = w.bq, w.bkv, w.d, w.mcs, w.dtype, w.c
  zeros_s = plgpu.layout_cast(jnp.full((bq, bkv), 0, jnp.float32), plgpu.Layout.WGMMA)
  zeros_o = plgpu.layout_cast(jnp.full((bq, d), 0, jnp.float32), plgpu.Layout.WGMMA)

  def slot_of(e):
    return lax.rem(e, jnp.array(mcs, e.dtype))

  def softmax(s, e, m_i, l_i, masked, kseg):
    """(p, m_new, l_new, alpha) of tile ``e``'s scores (``kseg``: its key segment ids); ``p``
    is fp32: the caller converts it once the P V that reads the previous P has finished."""
    if masked:
      s = jnp.where(tile_allowed(w, e, kseg), s, -jnp.inf)
    m_new = jnp.maximum(m_i, s.max(axis=1) * c)
    alpha = jnp.exp2(m_i - m_new)
    p = jnp.exp2(s * c - lax.broadcast_in_dim(m_new, s.shape, [0]))
    l_new = l_i * alpha + p.sum(axis=1)
    return p, m_new, l_new, alpha

  def body(o_ref, s_ref):
    o_ref[...] = zeros_o
    m_i = plgpu.layout_cast(jnp.full((bq,), M_INIT, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    l_i = plgpu.layout_cast(jnp.full((bq,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    p16 = zeros_s.astype(dtype)
    pl.when(w.wg == 1)(w.schedule_barrier)

    def prologue(e, carry):     # tile 0 alone; always masked (exact when the tile is full)
      _, m_i, l_i, _ = carry
      plgpu.barrier_wait(w.k_bar.at[0])
      s_ref[...] = zeros_s
      plgpu.wgmma(s_ref, w.qo_smem, plgpu.transpose_ref(w.k_smem.at[0], (1, 0)))
      w.schedule_barrier()
      s = plgpu.wgmma_accumulator_load(s_ref, wait_n=0)
      kseg = None if w.seg is None else w.seg.ring(0, True)
      plgpu.barrier_arrive(w.k_used.at[0])
      p, m_new, l_new, alpha = softmax(s, e, m_i, l_i, True, kseg)
      return p.astype(dtype), m_new, l_new, alpha

    def step(e, carry, masked):
      p_prev, m_i, l_i, alpha_prev = carry
      slot, pslot = slot_of(e), slot_of(e - 1)
      plgpu.barrier_wait(w.k_bar.at[slot])
      s_ref[...] = zeros_s
      plgpu.wgmma(s_ref, w.qo_smem, plgpu.transpose_ref(w.k_smem.at[slot], (1, 0)))
      if rescale_early:   # FA3's order: O *= alpha of tile e - 1 while S_e is in flight
        o = plgpu.wgmma_accumulator_load(o_ref, wait_n=1)
        o_ref[...] = o * lax.broadcast_in_dim(alpha_prev, (bq, d), [0])
      plgpu.barrier_wait(w.v_bar.at[pslot])
      plgpu.wgmma(o_ref, p_prev, w.v_smem.at[pslot])
      w.schedule_barrier()
      s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)   # S done, P V still in flight
      kseg = None if w.seg is None else w.seg.ring(slot, masked)
      plgpu.barrier_arrive(w.k_used.at[slot])
      p, m_new, l_new, alpha = softmax(s, e, m_i, l_i, masked, kseg)
      if pin_wait:
        # ptxas hoists a plain wait above the softmax (and with it the V release), so nothing
        # overlaps; a shared-memory store of the softmax's row sums before it pins it here.
        w.lse_smem[...] = l_new
      if rescale_early:
        plgpu.wgmma_wait(0)
      else:
        o = plgpu.wgmma_accumulator_load(o_ref, wait_n=0)
      plgpu.barrier_arrive(w.v_used.at[pslot])
      if not rescale_early:
        o_ref[...] = o * lax.broadcast_in_dim(alpha, (bq, d), [0])
      # Converted only now: LLVM gives the new P the registers of the carried one, which the
      # P V above reads while in flight, and ptxas then serialises every wgmma (C7513).
      return p.astype(dtype), m_new, l_new, alpha

    def epilogue(e, carry):
      p_last, alpha_last = carry
      last = slot_of(w.n_tot - 1)
      if rescale_early:
        o = plgpu.wgmma_accumulator_load(o_ref, wait_n=0)
        o_ref[...] = o * lax.broadcast_in_dim(alpha_last, (bq, d), [0])
      plgpu.barrier_wait(w.v_bar.at[last])
      plgpu.wgmma(o_ref, p_last, w.v_smem.at[last])
      plgpu.wgmma_wait(0)
      plgpu.barrier_arrive(w.v_used.at[last])
      return carry

    n_pro = jnp.minimum(w.n_tot, 1)   # 1 when the row block sees any tile: prologue, epilogue
    carry = lax.fori_loop(0, n_pro, prologue, (p16, m_i, l_i, l_i))
    carry = lax.fori_loop(1, jnp.maximum(w.n_full, 1), functools.partial(step, masked=False),
                          carry)
    carry = lax.fori_loop(jnp.maximum(w.n_full, 1), w.n_tot,
                          functools.partial(step, masked=True), carry)
    p_last, m_i, l_i, alpha_last = carry
    lax.fori_loop(0, n_pro, epilogue, (p_last, alpha_last))
    pl.when(w.wg == 0)(w.schedule_barrier)
    return plgpu.wgmma_accumulator_load(o_ref, wait_n=0), m_i, l_i

  return pl.run_scoped(body, plgpu.ACC((bq, d), jnp.float32), plgpu.ACC((bq, bkv), jnp.float32))


@functools.partial(jax.jit,
                   static_argnames=("spec", "config", "scale", "rescale_early", "pin_wait"))
def sparse_attention_fwd(q, k, v, spec: AttentionSpec, config: MosaicConfig = MosaicConfig(),
                         scale: float | None = None, segment_ids=None, kv_segment_ids=None,
                         rescale_early: bool = False, pin_wait: bool = False):
  """Returns (out [B, T, Hq, D], lse2 [B, Hq, T] base-2), as ``pallas_gpu_mosaic``'s (segment
  ids too). ``rescale_early``, ``pin_wait``: ``_overlap_loop``'s (A/B options for
  ``benchmarks/mosaic_fwd.py``)."""
  loop = functools.partial(_overlap_loop, rescale_early=rescale_early, pin_wait=pin_wait)
  return forward(q, k, v, spec, config, scale, loop, split_release=True,
                 segment_ids=segment_ids, kv_segment_ids=kv_segment_ids)
