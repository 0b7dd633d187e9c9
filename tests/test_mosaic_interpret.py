"""The Mosaic GPU kernels themselves, run on CPU in jax's GPU interpret mode, against the dense
reference: the forward, the dQ and dK/dV kernels and the single-pass fused backward, outputs and
all gradients.

``pallas_kernels/mosaic_interpret.py`` says what the interpreter checks (tables, indexing, masks,
formulas, barrier pairing, shared-memory races between warpgroups) and what it cannot (wgmma and
TMA run synchronously). Small tiles (16 rows, head_dim 64) keep it to seconds per call; the
lengths make the K/V ring wrap and give CTAs with both full and partial entries.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
import numpy as np
import pytest

from pallas_kernels.backends import _frame
from pallas_kernels.backends import pallas_gpu_mosaic as pm
from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb
from pallas_kernels.mosaic_interpret import interpret_mode
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

FWD = pm.MosaicConfig(block_q=16, block_kv=16, max_concurrent_steps=2)
BWD = mb.MosaicBwdConfig(block_q=16, block_kv=16, max_concurrent_steps=2)
# The fused kernel stages dS in tiles of its swizzle ((8, 32) at head_dim 64): block_q a multiple
# of 32 here; 64 as on the GPU. T_FUSED gives 4 query tiles, so the ring wraps there too.
FUSED = mb.MosaicBwdConfig(block_q=64, block_kv=16, max_concurrent_steps=2)
T_FUSED = 256
SPECS = ["sink_window:16:48@16", "strided:2:3@16", "full@16"]
T, D = 128, 64


def _inputs(hq=1, hkv=1, seed=0, t=T):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  shapes = [(1, t, hq, D), (1, t, hkv, D), (1, t, hkv, D), (1, t, hq, D)]
  return [jax.random.normal(kk, s, jnp.float32).astype(jnp.bfloat16) for kk, s in zip(ks, shapes)]


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _reference(q, k, v, do, spec, seg=None):
  """fp32 dense out, natural-log lse and (dq, dk, dv) for cotangent ``do``."""
  f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
  (out, lse), vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, spec, segment_ids=seg,
                                                                return_lse=True), *f32[:3])
  grads = vjp((f32[3], jnp.zeros_like(lse)))
  return out, lse, grads


def _bwd_stats(out, lse, do):
  """lse2 (base 2, ``+inf`` where a row sees nothing) and delta, as ``pallas_gpu._bwd`` passes."""
  lse_b, delta = _frame.bwd_row_stats(out, lse, do, None)
  return lse_b / math.log(2), delta


@pytest.mark.parametrize("spec", SPECS)
def test_forward_vs_reference(spec):
  spec = AttentionSpec.parse(spec)
  q, k, v, do = _inputs()
  want, want_lse, _ = _reference(q, k, v, do, spec)
  with interpret_mode(detect_races=True):
    out, lse2 = pm.sparse_attention_fwd(q, k, v, spec, FWD)
  assert out.dtype == q.dtype and out.shape == q.shape
  assert _rel(out, want) < 1e-2
  lse = np.asarray(lse2) * math.log(2)
  assert np.abs(lse - np.asarray(want_lse)).max() < 2e-2


@pytest.mark.parametrize("spec,over", [
    ("full@16", dict(longest_first=False)),
    ("full@16", dict(max_concurrent_steps=3)),
    ("strided:2:3@16", dict(max_concurrent_steps=4)),
    ("sink_window:16:48@16", dict(persistent_ctas=3)),
    ("full@16", dict(persistent_ctas=3, max_concurrent_steps=3, longest_first=False)),
], ids=["shortest_first", "ring3", "ring4-strided", "persistent3-sink_window",
        "persistent3-ring3-shortest_first"])
def test_forward_config_variants_do_not_change_the_result(spec, over):
  """``MosaicConfig`` options that change only the schedule give the default's output and lse,
  bit-equal, and the reference's: ``longest_first=False`` (CTA ``i`` takes query row ``i``; the
  default, True, row ``n - 1 - i``) and a K/V ring of 3 or 4 slots (``max_concurrent_steps``;
  ``benchmarks/mosaic_fwd.py``'s ``kv64_mcs4`` variant has 4), which wraps here (up to 8 tiles
  per row), and persistent CTAs (3 CTAs for 4 row blocks: one CTA takes two, its ring running on
  from the first to the second)."""
  spec = AttentionSpec.parse(spec)
  q, k, v, do = _inputs(seed=5)
  want, _, _ = _reference(q, k, v, do, spec)
  with interpret_mode(detect_races=True):
    got = [pm.sparse_attention_fwd(q, k, v, spec, cfg)
           for cfg in (dataclasses.replace(FWD, **over), FWD)]
  assert _rel(got[0][0], want) < 1e-2
  np.testing.assert_array_equal(np.asarray(got[0][0], np.float32),
                                np.asarray(got[1][0], np.float32))
  np.testing.assert_array_equal(np.asarray(got[0][1]), np.asarray(got[1][1]))


@pytest.mark.parametrize("spec,packed,hq,over", [
    ("sink_window:16:48@16", False, 1, {}),
    ("strided:2:3@16", False, 1, {}),
    ("full@16", False, 1, {}),
    ("sink_window:16:48@16", True, 1, {}),
    ("full@16", False, 2, dict(max_concurrent_steps=3)),
    ("strided:2:3@16", True, 2, dict(persistent_ctas=3)),
], ids=["sink_window", "strided", "full", "packed-sink_window", "gqa-ring3-full",
        "packed-gqa-persistent3-strided"])
def test_forward_overlap_vs_reference(spec, packed, hq, over):
  """``MosaicConfig(overlap=True)`` (FA4's schedule, ``pallas_gpu_mosaic_overlap``): intra-
  warpgroup overlap, named-barrier turns (modelled: a deadlock or an arrival left pending
  fails) and K and V refilled separately, against the reference and the default loop (the same
  sums in another order: close, not bit-equal), with segment ids, GQA, a 3-slot ring and
  persistent CTAs (3 CTAs for 8 work items)."""
  spec = AttentionSpec.parse(spec)
  q, k, v, do = _inputs(hq=hq, seed=6)
  seg = _packed(T) if packed else None
  want, want_lse, _ = _reference(q, k, v, do, spec, seg)
  cfg = dataclasses.replace(FWD, overlap=True, **over)
  with interpret_mode(detect_races=True):
    out, lse2 = pm.sparse_attention_fwd(q, k, v, spec, cfg, segment_ids=seg, kv_segment_ids=seg)
    base, base_lse2 = pm.sparse_attention_fwd(q, k, v, spec, dataclasses.replace(FWD, **over),
                                              segment_ids=seg, kv_segment_ids=seg)
  assert _rel(out, want) < 1e-2
  assert np.abs(np.asarray(lse2) * math.log(2) - np.asarray(want_lse)).max() < 2e-2
  assert _rel(out, base) < 5e-3
  np.testing.assert_allclose(np.asarray(lse2), np.asarray(base_lse2), rtol=0, atol=1e-4)


def _named_barrier_kernel(protocol):
  """A one-CTA kernel of two warpgroups running ``protocol(wg)`` (calls of
  ``pm.named_barrier``), then each writing its index to the output."""
  def body(o_ref):
    wg = jax.lax.axis_index("wg")
    protocol(wg)
    o_ref[wg] = jnp.full((128,), wg, jnp.int32)
  return plgpu.kernel(body, out_type=jax.ShapeDtypeStruct((2, 128), jnp.int32),
                      num_threads=2, thread_name="wg")


def test_named_barrier_model_catches_bad_protocols():
  """The interpreter's named barriers pass the overlap forward's protocol (one turn each way)
  and fail the two ways a protocol can go wrong: an arrival left pending (both warpgroups only
  arrive: the barrier completes with no sync) and a deadlock (a sync nobody arrives at)."""
  def ping_pong(wg):
    pl.when(wg == 1)(lambda: pm.named_barrier("arrive", "other"))
    pm.named_barrier("sync", "own")
    pm.named_barrier("arrive", "other")
    pl.when(wg == 0)(lambda: pm.named_barrier("sync", "own"))

  with interpret_mode():
    np.testing.assert_array_equal(_named_barrier_kernel(ping_pong)(), [[0] * 128, [1] * 128])
  def arrivals_only(wg):   # both arrive at warpgroup 0's barrier; nobody syncs
    pl.when(wg == 0)(lambda: pm.named_barrier("arrive", "own"))
    pl.when(wg == 1)(lambda: pm.named_barrier("arrive", "other"))

  with pytest.raises(Exception, match="completed by 2 arrives"):
    with interpret_mode():
      _named_barrier_kernel(arrivals_only)().block_until_ready()
  with pytest.raises(Exception, match="deadlocks"):
    with interpret_mode(wait_s=2.0):
      _named_barrier_kernel(
          lambda wg: pl.when(wg == 0)(lambda: pm.named_barrier("sync", "own")))(
          ).block_until_ready()
  with pytest.raises(ValueError, match="named_barrier"):
    pm.named_barrier("wait", "own")


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fused", [False, True], ids=["dq_dkv", "fused"])
def test_backward_vs_reference(spec, fused):
  spec = AttentionSpec.parse(spec)
  q, k, v, do = _inputs(seed=1, t=T_FUSED if fused else T)
  out, lse, want = _reference(q, k, v, do, spec)
  lse2, delta = _bwd_stats(out, lse, do)
  with interpret_mode(detect_races=True):
    got = mb.gradients(q, k, v, do, lse2, delta, spec, FUSED if fused else BWD, fused=fused)
  for name, g, w, x in zip("qkv", got, want, (q, k, v)):
    assert g.shape == x.shape, name
    assert _rel(g, w) < 2e-2, name


@pytest.mark.parametrize("fused, over", [(False, dict(rederive=False)),
                                         (True, dict(rederive=False))],
                         ids=["dq_dkv-no_rederive", "fused-no_rederive"])
def test_backward_config_variants(fused, over):
  """``MosaicBwdConfig(rederive=False)``: K's and V's refs and the mask's offsets held across
  the loop, not recomputed each step (the default before 2026-12-06)."""
  spec = AttentionSpec.parse("sink_window:16:48@16")
  q, k, v, do = _inputs(seed=3, t=T_FUSED if fused else T)
  out, lse, want = _reference(q, k, v, do, spec)
  lse2, delta = _bwd_stats(out, lse, do)
  cfg = dataclasses.replace(FUSED if fused else BWD, **over)
  with interpret_mode(detect_races=True):
    got = mb.gradients(q, k, v, do, lse2, delta, spec, cfg, fused=fused)
  for name, g, w in zip("qkv", got, want):
    assert _rel(g, w) < 2e-2, name


def test_gqa_forward_and_fused_backward():
  """Two query heads on one K/V head: the kernels' head mapping and the GQA sum. (The other
  cases use one head: each grid point is interpreted in turn, so heads cost time; for the same
  reason this one takes 2 fused query tiles, not T_FUSED's 4: the ring wraps in the cases above.)"""
  spec = AttentionSpec.parse("sink_window:16:48@16")
  q, k, v, do = _inputs(hq=2, hkv=1, seed=2, t=2 * FUSED.block_q)
  out_w, lse, want = _reference(q, k, v, do, spec)
  lse2, delta = _bwd_stats(out_w, lse, do)
  with interpret_mode():
    out, _ = pm.sparse_attention_fwd(q, k, v, spec, FWD)
    got = mb.sparse_attention_bwd(q, k, v, do, lse2, delta, spec, FUSED)
  assert _rel(out, out_w) < 1e-2
  for name, g, w in zip("qkv", got, want):
    assert _rel(g, w) < 2e-2, name


def test_interpreter_reports_a_deadlock():
  """Two warpgroups that each wait for the other's arrive before giving their own: the
  interpreter must report a deadlock, not hang. (Such a deadlock, in a forward since removed,
  was found this way before the kernel ever ran on a GPU.)"""
  def body(x_ref, o_ref, bars):
    wg = jax.lax.axis_index("wg")
    for me in (0, 1):
      @pl.when(wg == me)
      def _(me=me):
        plgpu.barrier_wait(bars.at[1 - me])
        plgpu.barrier_arrive(bars.at[me])
        o_ref[...] = x_ref[...]

  def entry(x_ref, o_ref):
    pl.run_scoped(lambda b: body(x_ref, o_ref, b), plgpu.Barrier(num_arrivals=1, num_barriers=2),
                  collective_axes="wg")
  x = jnp.zeros((8, 128), jnp.float32)
  f = plgpu.kernel(entry, out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), num_threads=2,
                   thread_name="wg")
  with pytest.raises(Exception, match="deadlocks"):
    with interpret_mode(wait_s=3):
      jax.block_until_ready(jax.jit(f)(x))


@pytest.mark.parametrize("d,tile", [(64, 32), (128, 64)])
def test_fused_refuses_narrow_query_tiles(d, tile):
  """dS is staged in tiles of the kernel's swizzle: 128 bytes where head_dim % 128 == 0 (so each
  warpgroup's half of K's columns is whole tiles), else 64."""
  q = k = v = do = jnp.zeros((1, T, 1, d), jnp.bfloat16)
  lse2 = delta = jnp.zeros((1, 1, T), jnp.float32)
  with pytest.raises(ValueError, match=f"block_q a multiple of {tile} "):
    mb.sparse_attention_bwd(q, k, v, do, lse2, delta, AttentionSpec.full(16), BWD)


def test_interpret_mode_restores_jax():
  """The additions last only for the ``with`` block."""
  from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks, jaxpr_interpret
  before = (jaxpr_interpret.JaxprInterpreter._interpret_arithmetic_primitive,
            gpu_callbacks.copy_smem_to_gmem, gpu_callbacks.callback)
  with pytest.raises(ValueError, match="stop"):
    with interpret_mode():
      raise ValueError("stop")
  after = (jaxpr_interpret.JaxprInterpreter._interpret_arithmetic_primitive,
           gpu_callbacks.copy_smem_to_gmem, gpu_callbacks.callback)
  assert before == after


def test_interpret_mode_finishes_async_work_under_its_additions(monkeypatch):
  """A kernel's callbacks may still run after the ``with`` body returns (dispatch is
  asynchronous): ``interpret_mode`` waits for them (``jax.effects_barrier``) before it restores
  jax's interpreter, whose own barrier check refuses what its relaxed one allows."""
  from jax._src.pallas.mosaic_gpu.interpret import shared_memory
  from pallas_kernels import mosaic_interpret
  seen = []
  relaxed = mosaic_interpret._barrier_deallocate  # pylint: disable=protected-access
  monkeypatch.setattr(jax, "effects_barrier",
                      lambda: seen.append(shared_memory.Barrier.deallocate is relaxed))
  with interpret_mode():
    pass
  assert seen == [True]
  assert shared_memory.Barrier.deallocate is not relaxed


def _packed(t):
  """Segment ids [1, t] of packed documents: boundaries off the 16-token tile grid, a one-token
  document, and documents longer than the 48-token window (so sink+window is not full)."""
  cuts = [70, 71, t - 28] if t == T else [70, 71, 150, 200]
  return jnp.asarray(np.searchsorted(np.asarray(cuts), np.arange(t), side="right")[None],
                     jnp.int32)


@pytest.mark.parametrize("spec", SPECS)
def test_packed_forward_vs_reference(spec):
  """Segment ids: the visit lists skip cross-document tiles, the masked tiles compare ids."""
  spec = AttentionSpec.parse(spec)
  q, k, v, do = _inputs(seed=3)
  seg = _packed(T)
  want, want_lse, _ = _reference(q, k, v, do, spec, seg)
  assert _rel(_reference(q, k, v, do, spec)[0], want) > 0.1   # the documents matter here
  with interpret_mode(detect_races=True):
    out, lse2 = pm.sparse_attention_fwd(q, k, v, spec, FWD, segment_ids=seg, kv_segment_ids=seg)
  assert _rel(out, want) < 1e-2
  assert np.abs(np.asarray(lse2) * math.log(2) - np.asarray(want_lse)).max() < 2e-2


@pytest.mark.parametrize("spec,fused", [("sink_window:16:48@16", False),
                                        ("strided:2:3@16", False), ("full@16", True)])
def test_packed_backward_vs_reference(spec, fused):
  """Segment ids through the dQ and dK/dV kernels, and the fused backward with GQA 2/1."""
  spec = AttentionSpec.parse(spec)
  t, hq = (T_FUSED, 2) if fused else (T, 1)
  q, k, v, do = _inputs(hq=hq, seed=4, t=t)
  seg = _packed(t)
  out, lse, want = _reference(q, k, v, do, spec, seg)
  lse2, delta = _bwd_stats(out, lse, do)
  kw = dict(segment_ids=seg, kv_segment_ids=seg)
  with interpret_mode(detect_races=True):
    got = mb.gradients(q, k, v, do, lse2, delta, spec, FUSED if fused else BWD, fused=fused,
                       **kw)
  for name, g, w in zip("qkv", got, want):
    assert _rel(g, w) < 2e-2, name


def test_segment_ids_both_or_neither():
  q, k, v, _ = _inputs()
  with pytest.raises(ValueError, match="both segment_ids and kv_segment_ids"):
    pm.sparse_attention_fwd(q, k, v, AttentionSpec.full(16), FWD, segment_ids=_packed(T))
  with pytest.raises(ValueError, match=r"kv_segment_ids must have shape \(1, 128\), got \(1, 64\)"):
    pm.sparse_attention_fwd(q, k, v, AttentionSpec.full(16), FWD, segment_ids=_packed(T),
                            kv_segment_ids=jnp.zeros((1, 64), jnp.int32))
