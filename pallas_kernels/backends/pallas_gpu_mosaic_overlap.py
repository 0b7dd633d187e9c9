"""The Mosaic GPU forward's compute loop in FA4's Sm90 schedule (``MosaicConfig(overlap=True)``).

``pallas_gpu_mosaic._loop`` runs, per compute warpgroup and tile: S = Q Kᵀ (wait), softmax,
P V (wait); the other warpgroup's matmuls are all that run under a softmax. FA4's Sm90 forward
(flash-attn-4 4.0.0b36, ``flash_fwd_sm90.py``: ``mma_one_n_block_intrawg_overlap`` with
``use_scheduler_barrier``) does two more things, and this loop does both:
- **intra-warpgroup overlap**: per step e ≥ 1, issue S_e = Q K_eᵀ and O += P_{e−1} V_{e−1}
  back to back, wait for S_e only (``wgmma_accumulator_load(..., wait_n=1)``), run the softmax
  of tile e while P V is in flight, then wait for P V and rescale O;
- **FA3's warp scheduler**: warpgroup w syncs on its own named hardware barrier before issuing
  the pair and arrives on the other's after it (``pallas_gpu_mosaic.named_barrier``), so the
  pairs alternate 0, 1, 0, 1 on the tensor cores. Warpgroup 1 arrives on warpgroup 0's barrier
  at the start (0 goes first); warpgroup 0 syncs once more at the end, taking 1's last arrival,
  so no arrival is left pending. The first tile (S₀ and its softmax) and the last P V run
  outside the turns, as in FA4.

Each part alone was built before and measured slower than the default loop on an H100
(docs/kernels.md: the overlap with a shared-memory schedule barrier 0.88-0.89x, 2026-12-07;
the named barriers around the default loop's matmuls 0.90-0.94x); this is the combination
FA4 runs. P stays fp32 until the in-flight P V has been waited for, then is converted (FA3's
order): converting it earlier let LLVM give the new P the registers the in-flight wgmma reads,
and ptxas then serialised every wgmma (note C7513). The memory warpgroup refills K and V slots
separately (``stream_kv(split=True)``): V of tile e is released one step after K.
The outputs (out, base-2 lse) are the default loop's, up to the order of fp32 sums.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.backends.pallas_gpu_mosaic import M_INIT, named_barrier, tile_softmax


def overlap_loop(w):
  """A compute warpgroup's walk (``w``: ``pallas_gpu_mosaic.forward``'s refs, indices and
  constants); returns the unnormalised (acc, m_i, l_i) as ``pallas_gpu_mosaic._loop`` does."""
  bq, bkv, d, dtype = w.bq, w.bkv, w.d, w.dtype
  slot_of = w.slot   # the ring slot of visit-list entry e (persistent CTAs: offset by e0)

  def softmax(s, e, m_i, l_i, masked, kseg):
    """(p, m_new, l_new, alpha) of tile ``e``'s scores (``kseg``: its key segment ids); ``p``
    is fp32: the caller converts it once the P V that reads the previous P has finished."""
    p, m_new, alpha = tile_softmax(w, s, e, m_i, masked, kseg)
    return p, m_new, l_i * alpha + p.sum(axis=1), alpha

  def body(o_ref, s_ref):
    zeros_s = plgpu.layout_cast(jnp.full((bq, bkv), 0, jnp.float32), plgpu.Layout.WGMMA)
    o_ref[...] = plgpu.layout_cast(jnp.full((bq, d), 0, jnp.float32), plgpu.Layout.WGMMA)
    m_i = plgpu.layout_cast(jnp.full((bq,), M_INIT, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    l_i = plgpu.layout_cast(jnp.full((bq,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    pl.when(w.wg == 1)(lambda: named_barrier("arrive", "other"))

    def first(e, carry):     # tile 0 alone, outside the turns; masked (exact on a full tile)
      _, m_i, l_i = carry
      plgpu.barrier_wait(w.k_bar.at[w.first_slot])
      s_ref[...] = zeros_s
      plgpu.wgmma(s_ref, w.qo_smem, plgpu.transpose_ref(w.k_smem.at[w.first_slot], (1, 0)))
      s = plgpu.wgmma_accumulator_load(s_ref, wait_n=0)
      kseg = None if w.seg is None else w.seg.ring(w.first_slot, True)
      plgpu.barrier_arrive(w.k_used.at[w.first_slot])
      p, m_new, l_new, _ = softmax(s, e, m_i, l_i, True, kseg)
      return p.astype(dtype), m_new, l_new

    def step(e, carry, masked):
      p_prev, m_i, l_i = carry
      slot, pslot = slot_of(e), slot_of(e - 1)
      plgpu.barrier_wait(w.k_bar.at[slot])
      named_barrier("sync", "own")
      s_ref[...] = zeros_s
      plgpu.wgmma(s_ref, w.qo_smem, plgpu.transpose_ref(w.k_smem.at[slot], (1, 0)))
      plgpu.barrier_wait(w.v_bar.at[pslot])
      plgpu.wgmma(o_ref, p_prev, w.v_smem.at[pslot])
      named_barrier("arrive", "other")
      s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)   # S done, P V still in flight
      kseg = None if w.seg is None else w.seg.ring(slot, masked)
      plgpu.barrier_arrive(w.k_used.at[slot])
      p, m_new, l_new, alpha = softmax(s, e, m_i, l_i, masked, kseg)
      o = plgpu.wgmma_accumulator_load(o_ref, wait_n=0)
      plgpu.barrier_arrive(w.v_used.at[pslot])
      o_ref[...] = o * lax.broadcast_in_dim(alpha, (bq, d), [0])
      return p.astype(dtype), m_new, l_new

    def last(e, p_last):     # the last P V, outside the turns
      slot = slot_of(w.n_tot - 1)
      plgpu.barrier_wait(w.v_bar.at[slot])
      plgpu.wgmma(o_ref, p_last, w.v_smem.at[slot])
      plgpu.wgmma_wait(0)
      plgpu.barrier_arrive(w.v_used.at[slot])
      return p_last

    p16 = zeros_s.astype(dtype)
    n_first = jnp.minimum(w.n_tot, 1)   # 1 when the row block sees any tile
    carry = lax.fori_loop(0, n_first, first, (p16, m_i, l_i))
    carry = lax.fori_loop(1, jnp.maximum(w.n_full, 1), functools.partial(step, masked=False),
                          carry)
    carry = lax.fori_loop(jnp.maximum(w.n_full, 1), w.n_tot,
                          functools.partial(step, masked=True), carry)
    p_last, m_i, l_i = carry
    lax.fori_loop(0, n_first, last, p_last)
    pl.when(w.wg == 0)(lambda: named_barrier("sync", "own"))
    return plgpu.wgmma_accumulator_load(o_ref, wait_n=0), m_i, l_i

  return pl.run_scoped(body, plgpu.ACC((bq, d), jnp.float32), plgpu.ACC((bq, bkv), jnp.float32))
