"""CPU checks of the cuDNN path's decomposition (tests/gpu/test_gpu_cudnn.py runs cuDNN itself).

``impl="dense"`` runs the very same plan, merge and custom VJP with dense XLA attention standing
in for the cuDNN calls, so the sink / window split (exact overlap), the lse merge and the
merged-statistics backward are checked here against the reference backend.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.backends import cudnn, cudnn_common, cudnn_packed
from pallas_kernels.reference import reference_attention as _reference_attention
from pallas_kernels.spec import AttentionSpec

# One compile per shape instead of one per primitive (eager): keeps the file fast on a busy CPU.
reference_attention = jax.jit(_reference_attention,
                              static_argnames=("spec", "q_offset", "kv_offset", "return_lse"))


def _qkv(seed, T=96, Hq=4, Hkv=2, D=16, Tk=None):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  Tk = T if Tk is None else Tk
  return (jax.random.normal(kq, (1, T, Hq, D)), jax.random.normal(kk, (1, Tk, Hkv, D)),
          jax.random.normal(kv, (1, Tk, Hkv, D)))


def _dense(spec, **kw):
  return functools.partial(cudnn.cudnn_attention, spec=spec, impl="dense", **kw)


SPECS = [
    AttentionSpec.full(16),
    AttentionSpec.sink_window(4, 32, 16),     # sink smaller than a block
    AttentionSpec.sink_window(20, 16, 16),    # sink > window: keys inside both sets counted once
    AttentionSpec.sink_window(0, 32, 16),     # window only
    AttentionSpec.sink_window(8, 128, 16),    # window longer than the row: no sink part
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_forward_and_lse_match_reference(spec):
  q, k, v = _qkv(0)
  out, lse = _dense(spec, return_lse=True)(q, k, v)
  ref, ref_lse = reference_attention(q, k, v, spec, return_lse=True)
  np.testing.assert_allclose(out, ref, atol=3e-5, rtol=3e-5)
  np.testing.assert_allclose(lse, ref_lse, atol=3e-5, rtol=3e-5)


def _loss(fn, with_lse, shape):
  """sum(out * w_o) (+ sum(lse * w_l)) with fixed random weights: exercises every cotangent."""
  w_o = jax.random.normal(jax.random.PRNGKey(5), shape)
  w_l = jax.random.normal(jax.random.PRNGKey(6), (shape[0], shape[2], shape[1]))

  def f(q, k, v):
    if not with_lse:
      return jnp.sum(fn(q, k, v) * w_o)
    o, l = fn(q, k, v, return_lse=True)
    return jnp.sum(o * w_o) + jnp.sum(l * w_l)
  return f


@pytest.mark.parametrize("spec", SPECS[:3], ids=str)
@pytest.mark.parametrize("with_lse", [False, True])
def test_grads_match_reference(spec, with_lse):
  q, k, v = _qkv(1, T=64)
  ref = functools.partial(reference_attention, spec=spec)
  g = jax.jit(jax.grad(_loss(_dense(spec), with_lse, q.shape), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.jit(jax.grad(_loss(ref, with_lse, q.shape), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_sink_and_window_key_sets_are_disjoint_and_cover_the_pattern():
  spec = AttentionSpec.sink_window(20, 16, 16)
  T = 64
  causal, window, n_sink = cudnn._plan(spec, T, T, 0, 0)
  main = np.asarray(cudnn_common._main_mask(T, T, causal, window))
  sink = np.zeros((T, T), bool)
  sink[window:, :n_sink] = np.asarray(cudnn_common._sink_mask(window, T, n_sink, window))
  # Rows before the window length have no sink outside their window: the sink part skips them.
  assert not np.any(np.asarray(cudnn_common._sink_mask(0, window, n_sink, window)))
  assert not np.any(main & sink)
  np.testing.assert_array_equal(main | sink, spec.allowed(np.arange(T)[:, None],
                                                          np.arange(T)[None, :]))


def test_widened_backward_carries_the_lse_cotangent():
  """The head-dim widening used for cuDNN (delta computed from (dO, O) inside the kernel)."""
  q, k, v = _qkv(2, T=32)
  scale = 0.25
  mask = cudnn_common._main_mask(32, 32, True, 8)
  o, lse = cudnn_common._dense_fwd(q, k, v, mask, scale=scale)
  do = jax.random.normal(jax.random.PRNGKey(3), o.shape)
  dlse = jax.random.normal(jax.random.PRNGKey(4), lse.shape)
  plain = lambda *a: cudnn_common._dense_bwd(*a, None, mask, scale=scale)
  got = jax.jit(functools.partial(cudnn_common._widened_bwd, plain))(q, k, v, o, lse, do, dlse)
  want = jax.jit(functools.partial(cudnn_common._dense_bwd, mask=mask, scale=scale))(
      q, k, v, o, lse, do, dlse)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_full_offsets_off_diagonal_chunk():
  """A fully visible chunk pair (ring attention's off-diagonal step) runs unmasked."""
  q, k, v = _qkv(3, T=32, Tk=16)
  spec = AttentionSpec.full(16)
  out, lse = _dense(spec, q_offset=48, kv_offset=16, return_lse=True)(q, k, v)
  ref, ref_lse = reference_attention(q, k, v, spec, q_offset=48, kv_offset=16, return_lse=True)
  np.testing.assert_allclose(out, ref, atol=3e-5)
  np.testing.assert_allclose(lse, ref_lse, atol=3e-5)


def test_why_unsupported_reasons():
  bf = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
  q, k = bf(1, 256, 8, 128), bf(1, 256, 2, 128)
  chk = functools.partial(cudnn.why_unsupported, check_platform=False)
  sw = AttentionSpec.sink_window(64, 128)
  assert chk(q, k, k, sw) is None
  assert chk(q, k, k, AttentionSpec.full()) is None
  assert "strided" in chk(q, k, k, AttentionSpec.strided(2, 4))
  seg = jnp.zeros((1, 256), jnp.int32)
  assert chk(q, k, k, sw, segment_ids=seg) is None
  assert chk(q, k, k, AttentionSpec.full(), segment_ids=seg, kv_segment_ids=seg) is None
  assert "Tq == Tk" in chk(q, k, k, AttentionSpec.full(), segment_ids=seg, q_offset=256)
  assert "offset" in chk(q, k, k, sw, q_offset=128, kv_offset=128)
  assert "diagonal" in chk(q, k, k, AttentionSpec.full(), q_offset=64)
  assert chk(q, k, k, AttentionSpec.full(), q_offset=256) is None
  f32 = jax.ShapeDtypeStruct((1, 256, 8, 128), jnp.float32)
  assert "bf16" in chk(f32, f32, f32, sw)
  assert "head_dim" in chk(bf(1, 256, 8, 20), bf(1, 256, 2, 20), bf(1, 256, 2, 20), sw)
  if jax.default_backend() != "gpu":
    assert "GPU" in cudnn.why_unsupported(q, k, k, sw)
    with pytest.raises(cudnn.CudnnError, match="GPU"):
      cudnn.cudnn_attention(jnp.zeros(q.shape, q.dtype), jnp.zeros(k.shape, k.dtype),
                                jnp.zeros(k.shape, k.dtype), sw)


def test_registry_supports_uses_static_facts():
  from pallas_kernels import api  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import triton_native  # pylint: disable=g-import-not-at-top
  sh = api.AttentionShapes(1, 4096, 4096, 32, 8, 128, 0, 0, False)
  sw = AttentionSpec.sink_window(64, 1024)
  assert "GPU" in cudnn.registry_supports("cpu", sw, sh, jnp.bfloat16)
  assert "GPU" in triton_native.registry_supports("tpu", sw, sh, jnp.bfloat16)
  reason = functools.partial(cudnn.unsupported_reason, q_len=4096, kv_len=4096, q_heads=32,
                             kv_heads=8, head_dim=128, dtype=jnp.bfloat16, check_platform=False)
  assert reason(sw) is None
  assert reason(sw, has_segment_ids=True) is None
  assert "Tq == Tk" in reason(sw, has_segment_ids=True, kv_len=2048)
  assert "2**31" in reason(sw, has_segment_ids=True, batch=128)
  native = functools.partial(triton_native.unsupported_reason, q_heads=32, kv_heads=8, head_dim=128,
                             check_platform=False)
  assert native(dtype=jnp.bfloat16) is None
  assert "bf16" in native(dtype=jnp.float32)


# ----------------------------------------------------------------------------- packed documents
def _seg(*rows):
  """Segment ids [B, T] from per-row lists of (id, length)."""
  return jnp.asarray([sum(([i] * n for i, n in row), []) for row in rows], jnp.int32)


# T = 96 per row; data/packing.py puts padding (id 0) at the END of a row.
PACKINGS = {
    "one": _seg([(1, 96)], [(1, 96)]),
    "many_pad": _seg([(1, 30), (2, 24), (3, 5), (4, 17), (0, 20)],
                     [(1, 1), (2, 40), (3, 54), (4, 1)]),
    "eight": _seg([(i + 1, 12) for i in range(8)], [(5, 70), (6, 26)]),
    "all_pad": _seg([(0, 96)], [(1, 60), (0, 36)]),
}
PACKED_SPECS = [AttentionSpec.full(16), AttentionSpec.sink_window(20, 16, 16),
                AttentionSpec.sink_window(4, 32, 16)]


def _qkv2(seed, T=96, Hq=4, Hkv=2, D=16):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (2, T, Hq, D)), jax.random.normal(kk, (2, T, Hkv, D)),
          jax.random.normal(kv, (2, T, Hkv, D)))


def _packed_direct(spec, max_segments):
  """The packed custom VJP itself (no fallback cond): fails loudly if the packing is wrong."""
  def fn(q, k, v, seg, return_lse=False):
    T = q.shape[1]
    plan = ("dense", q.shape[-1] ** -0.5) + cudnn._plan(spec, T, T, 0, 0)
    pk = cudnn_packed._packing(seg, seg, max_segments)
    if return_lse:
      return cudnn_packed._packed_attn_lse(q, k, v, seg, pk, plan)
    return cudnn_packed._packed_attn(q, k, v, seg, pk, plan)
  return fn


def test_packing_layout():
  seg = PACKINGS["many_pad"]
  pk = jax.jit(cudnn_packed._packing, static_argnums=2)(seg, seg, 6)
  assert bool(pk.ok)
  # Row 0: 5 segments, row 1: 4; all 9 shifted to the front, then unused slots.
  np.testing.assert_array_equal(pk.seqlen.reshape(-1),
                                [30, 24, 5, 17, 20, 1, 40, 54, 1, 0, 0, 0])
  np.testing.assert_array_equal(pk.offsets.reshape(-1)[:10],
                                [0, 30, 54, 59, 76, 96, 97, 137, 191, 192])
  assert np.all(np.asarray(pk.offsets).reshape(-1)[10:] == 192)
  slot = np.asarray(pk.slot)
  assert slot[0, 0] == 0 and slot[0, 31] == 96 + 1 and slot[1, 0] == 5 * 96
  assert slot[1, 95] == 8 * 96 and len(np.unique(slot)) == slot.size
  # The emulated kernel reads the same (segment, position) back from the cuDNN-form arrays.
  g, tl = cudnn_packed._emulated_layout(pk, 2, 96)
  np.testing.assert_array_equal(np.asarray(g) * 96 + np.asarray(tl), slot)
  lse = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 96))
  back = cudnn_packed._stats_to_lse(cudnn_packed._lse_to_stats(lse, pk.slot, 12), pk.slot)
  np.testing.assert_array_equal(back, lse)


@pytest.mark.parametrize("name,max_segments,ok", [
    ("one", 2, True), ("many_pad", 5, True), ("many_pad", 4, False), ("eight", 8, True),
    ("eight", 7, False), ("all_pad", 2, True)])
def test_packing_ok_flag(name, max_segments, ok):
  seg = PACKINGS[name]
  assert bool(cudnn_packed._packing(seg, seg, max_segments).ok) == ok


def test_packing_refuses_split_ids_and_different_kv_ids():
  split = _seg([(1, 40), (0, 16), (1, 40)], [(1, 96)])    # id 1 in two runs: must see across
  assert not bool(cudnn_packed._packing(split, split, 8).ok)
  seg = PACKINGS["many_pad"]
  assert not bool(cudnn_packed._packing(seg, seg.at[0, 5].set(9), 8).ok)


@pytest.mark.parametrize("spec", PACKED_SPECS, ids=str)
@pytest.mark.parametrize("name", list(PACKINGS))
def test_packed_forward_and_lse_match_reference(spec, name):
  q, k, v = _qkv2(7)
  seg = PACKINGS[name]
  ref, ref_lse = reference_attention(q, k, v, spec, segment_ids=seg, return_lse=True)
  out, lse = jax.jit(_packed_direct(spec, 8), static_argnames="return_lse")(
      q, k, v, seg, return_lse=True)
  np.testing.assert_allclose(out, ref, atol=3e-5, rtol=3e-5)
  np.testing.assert_allclose(lse, ref_lse, atol=3e-5, rtol=3e-5)
  # The public entry (runtime cond on the packing) agrees.
  out2, lse2 = _dense(spec, segment_ids=seg, max_segments=8, return_lse=True)(q, k, v)
  np.testing.assert_allclose(out2, ref, atol=3e-5, rtol=3e-5)
  np.testing.assert_allclose(lse2, ref_lse, atol=3e-5, rtol=3e-5)


@pytest.mark.parametrize("spec", PACKED_SPECS[:2], ids=str)
@pytest.mark.parametrize("name", ["many_pad", "eight"])
@pytest.mark.parametrize("with_lse", [False, True])
def test_packed_grads_match_reference(spec, name, with_lse):
  q, k, v = _qkv2(8)
  seg = PACKINGS[name]
  mine = functools.partial(_packed_direct(spec, 8), seg=seg)
  ref = functools.partial(reference_attention, spec=spec, segment_ids=seg)
  g = jax.jit(jax.grad(_loss(mine, with_lse, q.shape), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.jit(jax.grad(_loss(ref, with_lse, q.shape), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("max_segments", [8, 4])  # "many_pad" has 5 segments: 4 -> fallback
def test_public_entry_grads_through_the_runtime_cond(max_segments):
  spec = AttentionSpec.sink_window(20, 16, 16)
  q, k, v = _qkv2(9)
  seg = PACKINGS["many_pad"]
  mine = _dense(spec, segment_ids=seg, max_segments=max_segments)
  ref = functools.partial(reference_attention, spec=spec, segment_ids=seg)
  g = jax.jit(jax.grad(_loss(mine, True, q.shape), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.jit(jax.grad(_loss(ref, True, q.shape), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_runtime_cond_takes_the_fallback_only_when_needed(monkeypatch):
  """Fallback = NaN sentinel here: finite outputs prove the packed branch ran, and vice versa."""
  spec = AttentionSpec.full(16)
  q, k, v = _qkv2(10, T=96)
  nan = lambda impl, spec, scale, return_lse, q, *a: jnp.full(q.shape, jnp.nan, q.dtype)
  monkeypatch.setattr(cudnn_packed, "_fallback", nan)
  plan = ("dense", 0.25) + cudnn._plan(spec, 96, 96, 0, 0)
  run = jax.jit(lambda q, k, v, seg: cudnn_packed._segmented(q, k, v, seg, None, spec, plan,
                                                                 False, 6))
  assert np.all(np.isfinite(run(q, k, v, PACKINGS["many_pad"])))     # 5 segments <= 6
  assert np.all(np.isnan(run(q, k, v, PACKINGS["eight"])))           # 8 segments > 6
  split = _seg([(1, 40), (0, 16), (1, 40)], [(1, 96)])
  assert np.all(np.isnan(run(q, k, v, split)))


def test_max_segments_default_and_env(monkeypatch):
  monkeypatch.delenv(cudnn.MAX_SEGMENTS_ENV, raising=False)
  assert cudnn.default_max_segments() == cudnn.DEFAULT_MAX_SEGMENTS == 64
  monkeypatch.setenv(cudnn.MAX_SEGMENTS_ENV, "16")
  assert cudnn.default_max_segments() == 16
  # Without the env variable M follows the workspace budget (2 GiB per slot at 128K x 32 x 128).
  monkeypatch.delenv(cudnn.MAX_SEGMENTS_ENV)
  monkeypatch.delenv(cudnn.PACKED_WORKSPACE_ENV, raising=False)
  assert cudnn.packed_slot_bytes(1, 131072, 32, 128) == 2 * 2**30
  assert cudnn.default_max_segments(1, 131072, 32, 128) == 4
  assert cudnn.default_max_segments(1, 32768, 32, 128) == 16
  assert cudnn.default_max_segments(1, 4096, 32, 128) == 64
  monkeypatch.setenv(cudnn.PACKED_WORKSPACE_ENV, "2")
  assert cudnn.default_max_segments(1, 131072, 32, 128) == 1
  why = cudnn.unsupported_reason("full", q_len=131072, kv_len=131072, q_heads=32, kv_heads=32,
                                     head_dim=128, dtype=jnp.bfloat16, has_segment_ids=True,
                                     check_platform=False)
  assert why and "per segment slot" in why
  monkeypatch.setenv(cudnn.PACKED_ENV, "0")
  assert "disabled" in cudnn.unsupported_reason(
      "full", q_len=64, kv_len=64, q_heads=2, kv_heads=2, head_dim=16, dtype=jnp.bfloat16,
      has_segment_ids=True, check_platform=False)
  monkeypatch.delenv(cudnn.PACKED_ENV)
  monkeypatch.delenv(cudnn.PACKED_WORKSPACE_ENV)
  q, k, v = _qkv2(11, T=32)
  with pytest.raises(cudnn.CudnnError, match="max_segments"):
    _dense(AttentionSpec.full(16), segment_ids=jnp.zeros((2, 32), jnp.int32),
           max_segments=1)(q, k, v)
