"""CPU twin of the Pallas GPU (Triton) attention: the same kernels in Pallas interpret mode.

Tiny shapes and small tiles so several blocks, full and partial tiles, ragged tails and GQA groups
all occur. Forward, lse and all three gradients (through out AND lse) are compared with the dense
reference; the visit lists are checked against the dense mask; and the kernels are lowered to
Triton IR for CUDA (no GPU needed) to catch lowering errors before device time is spent.
"""

import contextlib
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.backends import pallas_gpu
from pallas_kernels.backends.gpu_tables import kernel_tables
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec, dense_mask

SMALL = pallas_gpu.TritonConfig(block_q=32, block_k=32, block_q_dq=32, block_k_dq=16,
                                block_q_dkv=16, block_k_dkv=32)


def _inputs(seed, T, Hq, Hkv, D, dtype=jnp.float32, Tk=None, B=1):
  Tk = T if Tk is None else Tk
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  return (jax.random.normal(ks[0], (B, T, Hq, D), dtype),
          jax.random.normal(ks[1], (B, Tk, Hkv, D), dtype),
          jax.random.normal(ks[2], (B, Tk, Hkv, D), dtype),
          jax.random.normal(ks[3], (B, T, Hq, D), jnp.float32))


def _run(fn, w):
  """jit(q, k, v -> (out, lse, (dq, dk, dv))) with a loss through both out and lse."""
  def loss(q, k, v):
    out, lse = fn(q, k, v)
    val = (jnp.sum(out.astype(jnp.float32) * w)
           + 0.3 * jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)))
    return val, (out, lse)
  def run(q, k, v):
    grads, (out, lse) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, lse, grads
  return jax.jit(run)


def _compare(spec, q, k, v, w, *, atol, config=SMALL, **kw):
  ours = functools.partial(pallas_gpu.attention, spec=spec, return_lse=True, config=config,
                           interpret=True, **kw)
  ref = functools.partial(reference_attention, spec=spec, return_lse=True, **kw)
  out, lse, grads = _run(ours, w)(q, k, v)
  rout, rlse, rgrads = _run(ref, w)(q, k, v)
  assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == rlse.shape
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(rlse))
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(rout, np.float32), atol=atol)
  fin = np.isfinite(np.asarray(rlse))
  np.testing.assert_allclose(np.asarray(lse)[fin], np.asarray(rlse)[fin], atol=1e-4)
  for name, a, b in zip("qkv", grads, rgrads):
    assert a.dtype == b.dtype
    scale = float(jnp.max(jnp.abs(b))) + 1e-6
    err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) / scale
    assert err < atol * 4, f"d{name} relative max error {err}"
  return lse


@pytest.mark.parametrize("spec,T,heads", [
    (AttentionSpec.sink_window(5, 32, 16), 100, (4, 2)),   # ragged, sink edge inside a tile
    (AttentionSpec.strided(2, 3, 16), 96, (3, 1)),         # GQA group of 3
    (AttentionSpec.full(16), 80, (2, 2)),
])
def test_fp32_matches_reference(spec, T, heads):
  q, k, v, w = _inputs(0, T, *heads, 32)
  _compare(spec, q, k, v, w, atol=2e-5)


def test_segments_and_gqa():
  q, k, v, w = _inputs(1, 90, 4, 2, 16, B=2)
  seg = np.zeros((2, 90), np.int32)
  seg[:, 30:] = 1
  seg[1, 70:] = 2
  _compare(AttentionSpec.strided(2, 2, 32), q, k, v, w, atol=2e-5, segment_ids=jnp.asarray(seg))


@pytest.mark.parametrize("contiguous", [True, False])
def test_packed_lists_with_offsets(contiguous):
  """Segment ids make the visit lists per batch row (``gpu_tables.segment_visits``: tiles across
  documents skipped): a later query chunk against a longer key range, separate key ids, ragged
  lengths; contiguous documents (many tiles skipped) and arbitrary ids (few)."""
  q, k, v, w = _inputs(5, 72, 2, 1, 32, Tk=130, B=2)
  rng = np.random.default_rng(0)
  kvseg = (np.repeat([[0, 1, 2, 3]], [40, 23, 1, 66], axis=1).repeat(2, 0) if contiguous
           else rng.integers(0, 3, (2, 130)))
  kvseg[1, 100:] = 7
  seg = kvseg[:, 58:]            # the queries are keys 58..129
  _compare(AttentionSpec.strided(2, 3, 16), q, k, v, w, atol=2e-5, q_offset=58, kv_offset=0,
           segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(kvseg))


def test_offsets_and_rows_that_see_nothing():
  # Keys start at absolute position 40: the first 40 queries see no key (zero row, lse -inf).
  q, k, v, w = _inputs(2, 72, 2, 1, 32, Tk=60)
  lse = _compare(AttentionSpec.sink_window(4, 32, 16), q, k, v, w, atol=2e-5, q_offset=0,
                 kv_offset=40)
  assert np.all(np.isneginf(np.asarray(lse)[:, :, :40]))


def test_chunk_offsets_full_and_window():
  # A later query chunk against an earlier, longer KV range (chunked prefill / sequence parallel).
  q, k, v, w = _inputs(3, 48, 2, 2, 32, Tk=112)
  _compare(AttentionSpec.sink_window(8, 48, 16), q, k, v, w, atol=2e-5, q_offset=64, kv_offset=0)


def test_bf16_head_dim_64():
  q, k, v, w = _inputs(4, 64, 2, 1, 64, jnp.bfloat16)
  _compare(AttentionSpec.sink_window(4, 32, 16), q, k, v, w, atol=2e-2)


def test_head_dim_not_power_of_two_and_default_tiles():
  q, k, v, w = _inputs(5, 40, 2, 2, 24)
  _compare(AttentionSpec.full(), q, k, v, w, atol=2e-5, config=None)


@pytest.mark.parametrize("spec", [AttentionSpec.sink_window(20, 64, 16), AttentionSpec.strided(3, 2, 32),
                                  AttentionSpec.full(16)])
@pytest.mark.parametrize("lens", [(200, 200, 0, 0), (97, 203, 106, 0), (60, 150, 150, 7)])
@pytest.mark.parametrize("blocks", [(16, 16), (32, 16), (16, 64)])
def test_visit_lists_match_dense_mask(spec, lens, blocks):
  tq, tk, qo, ko = lens
  bq, bk = blocks
  m = dense_mask(spec, tq, tk, q_offset=qo, kv_offset=ko)
  t = kernel_tables(spec, tq, tk, bq, bk, qo, ko)

  def split(rows):
    for i, row in enumerate(rows):
      n_full, n = int(row[0]), int(row[1])
      yield i, [int(x) for x in row[2:2 + n_full]], [int(x) for x in row[2 + n_full:2 + n]]

  for i, full, part in split(t.fwd):  # per query block: KV blocks, full ones first
    tiles = m[i * bq:(i + 1) * bq]
    vis = [j for j in range(t.n_kv_blocks) if tiles[:, j * bk:(j + 1) * bk].any()]
    assert sorted(full + part) == vis
    for j in full:  # full tiles: every pair visible and no padded key
      tile = tiles[:, j * bk:(j + 1) * bk]
      assert tile.shape[1] == bk and tile.all()
  for j, full, part in split(t.bwd):  # per KV block: query blocks, full ones first
    cols = m[:, j * bk:(j + 1) * bk]
    vis = [i for i in range(t.n_q_blocks) if cols[i * bq:(i + 1) * bq].any()]
    assert sorted(full + part) == vis
    for i in full:
      assert cols.shape[1] == bk and cols[i * bq:(i + 1) * bq].all()


def test_errors():
  q, k, v, _ = _inputs(6, 32, 2, 2, 16)
  if jax.default_backend() != "gpu":
    with pytest.raises(pallas_gpu.PallasGpuError, match="interpret=True"):
      pallas_gpu.attention(q, k, v, AttentionSpec.full())
  with pytest.raises(pallas_gpu.PallasGpuError, match="multiple of kv heads"):
    pallas_gpu.attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2),
                         AttentionSpec.full(), interpret=True)
  with pytest.raises(pallas_gpu.PallasGpuError, match="power of two"):
    pallas_gpu.TritonConfig(block_q=48)


@pytest.mark.parametrize("spec,seg,heads,dtype", [
    (AttentionSpec.sink_window(64, 512), False, (4, 4), jnp.bfloat16),
    (AttentionSpec.strided(2, 2), True, (4, 2), jnp.float32),
])
def test_lowers_to_triton_for_cuda(monkeypatch, spec, seg, heads, dtype):
  """Forward and backward lower to Triton IR for CUDA (Pallas -> Triton lowering, no GPU)."""
  monkeypatch.setattr(pallas_gpu, "_backend", lambda: "gpu")
  q = jax.ShapeDtypeStruct((1, 1000, heads[0], 128), dtype)
  k = jax.ShapeDtypeStruct((1, 1000, heads[1], 128), dtype)
  s = jax.ShapeDtypeStruct((1, 1000), jnp.int32)

  def f(q, k, v, s):
    kw = dict(segment_ids=s) if seg else {}
    return jax.grad(lambda q, k, v: jnp.sum(
        pallas_gpu.attention(q, k, v, spec, **kw).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)

  with _abstract_cuda_gpu():  # traced inside too: each equation records the abstract mesh
    text = jax.jit(f).trace(q, k, k, s).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("triton") >= 3  # forward, dQ, dK/dV kernels


def _abstract_cuda_gpu(device_kind="NVIDIA H100 80GB HBM3"):
  """Names the CUDA GPU to lower the Pallas-Triton kernels for when none is attached.

  jax <= 0.10 falls back to compute capability 9.0 when there is no local GPU. jax 0.11 reads the
  target from the current abstract mesh's ``AbstractDevice`` instead and, without one, raises
  "No supported GPU devices found, please specify an abstract GPU device using AbstractDevice".
  Trace under it as well as lower: each equation records the abstract mesh it was traced under and
  lowering re-enters that one. A 1-device mesh with an Auto axis changes nothing else.
  """
  if not hasattr(jax.sharding, "AbstractDevice"):
    return contextlib.nullcontext()
  device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), (jax.sharding.AxisType.Auto,),
                                   abstract_device=device)
  return jax.sharding.use_abstract_mesh(mesh)


def test_mosaic_forward_needs_a_hopper_gpu():
  q, k, v, _ = _inputs(7, 128, 2, 2, 64, jnp.bfloat16)
  cfg = pallas_gpu.TritonConfig(fwd_impl="mosaic")
  with pytest.raises(pallas_gpu.PallasGpuError, match="fwd_impl='mosaic' cannot run"):
    pallas_gpu.attention(q, k, v, AttentionSpec.full(), config=cfg, interpret=True)
  for bad in ("cuda", "mosaic_overlap"):   # the latter removed on 2026-12-07
    with pytest.raises(pallas_gpu.PallasGpuError, match="fwd_impl"):
      pallas_gpu.TritonConfig(fwd_impl=bad)


SEG = jax.ShapeDtypeStruct((1, 512), jnp.int32)


@pytest.mark.parametrize("seg,over", [(False, {}), (True, {}), (False, dict(longest_first=False)),
                                      (True, dict(overlap=True)),
                                      (True, dict(persistent_ctas=5))],
                         ids=["", "segments", "shortest_first", "overlap-segments",
                              "persistent-segments"])
@pytest.mark.parametrize("spec,hkv", [("sink_window:64:256", 2), ("strided:4:4", 4), ("full", 1)])
def test_mosaic_forward_lowers_for_cuda(spec, hkv, seg, over):
  """The Mosaic GPU forward, with and without segment ids, in either CTA order, with FA4's
  schedule (``overlap``: named barriers as inline PTX) and with persistent CTAs, lowers to Mosaic GPU IR with the outputs'
  shapes (no GPU needed; numerics: tests/test_mosaic_interpret.py and
  tests/gpu/test_gpu_pallas_gpu.py)."""
  # pylint: disable-next=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic as mod
  q = jax.ShapeDtypeStruct((1, 512, 4, 128), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((1, 512, hkv, 128), jnp.bfloat16)
  cfg = mod.MosaicConfig(**over)
  traced = jax.jit(lambda q, k, v, *s: mod.sparse_attention_fwd(
      q, k, v, AttentionSpec.parse(spec), cfg, segment_ids=s[0] if s else None,
      kv_segment_ids=s[0] if s else None)).trace(q, k, k, *((SEG,) if seg else ()))
  assert "mosaic_gpu" in traced.lower(lowering_platforms=("cuda",)).as_text()
  assert [(o.shape, o.dtype) for o in jax.tree.leaves(traced.out_info)] == [
      (q.shape, q.dtype), ((1, 4, 512), jnp.float32)]


@pytest.mark.parametrize("seg", [False, True], ids=["", "segments"])
@pytest.mark.parametrize("kernel", ["sparse_attention_dq", "sparse_attention_dkv",
                                    "sparse_attention_bwd"])
@pytest.mark.parametrize("spec,hkv", [("sink_window:64:256", 2), ("strided:4:4", 4), ("full", 1)])
def test_mosaic_bwd_lowers_for_cuda(spec, hkv, kernel, seg):
  """The Mosaic GPU dQ and dK/dV, and the single-pass (fused) backward, with and without
  segment ids, lower to Mosaic GPU IR for each pattern, MHA and GQA (no GPU needed; numerics:
  tests/test_mosaic_interpret.py, and on the GPU tests/gpu/test_gpu_pallas_gpu.py -k mosaic)."""
  from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb  # noqa: E402
  fn = getattr(mb, kernel)
  q = jax.ShapeDtypeStruct((1, 512, 4, 128), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((1, 512, hkv, 128), jnp.bfloat16)
  stat = jax.ShapeDtypeStruct((1, 4, 512), jnp.float32)
  jf = jax.jit(lambda q, k, v, do, lse, dl, *s: fn(
      q, k, v, do, lse, dl, AttentionSpec.parse(spec), segment_ids=s[0] if s else None,
      kv_segment_ids=s[0] if s else None))
  traced = jf.trace(q, k, k, q, stat, stat, *((SEG,) if seg else ()))
  text = traced.lower(lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text
  want = {"sparse_attention_dq": [q], "sparse_attention_dkv": [k, k],
          "sparse_attention_bwd": [q, k, k]}[kernel]
  assert [(o.shape, o.dtype) for o in jax.tree.leaves(traced.out_info)] == [
      (w.shape, w.dtype) for w in want]


@pytest.mark.parametrize("over", [dict(registers=(232, 40)), dict(rederive=False)],
                         ids=["regs232", "no_rederive"])
@pytest.mark.parametrize("kernel", ["sparse_attention_dkv", "sparse_attention_bwd"])
@pytest.mark.parametrize("d", [64, 128])
def test_mosaic_bwd_config_variants_lower_for_cuda(kernel, over, d):
  """The other ``MosaicBwdConfig`` settings of the dK/dV and fused kernels lower to Mosaic GPU
  (numerics: tests/test_mosaic_interpret.py::test_backward_config_variants)."""
  from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb  # noqa: E402
  fn, cfg = getattr(mb, kernel), mb.MosaicBwdConfig(**over)
  q = jax.ShapeDtypeStruct((1, 512, 4, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((1, 512, 2, d), jnp.bfloat16)
  stat = jax.ShapeDtypeStruct((1, 4, 512), jnp.float32)
  jf = jax.jit(lambda q, k, v, do, lse, dl: fn(q, k, v, do, lse, dl,
                                                AttentionSpec.parse("strided:4:4"), cfg))
  assert "mosaic_gpu" in jf.trace(q, k, k, q, stat, stat).lower(
      lowering_platforms=("cuda",)).as_text()


def test_mosaic_bwd_limits_and_config():
  from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb  # noqa: E402
  assert mb.unsupported(1024, 1024, 128, jnp.bfloat16) is None
  assert "bf16/f16" in mb.unsupported(1024, 1024, 128, jnp.float32)
  assert "head_dim" in mb.unsupported(1024, 1024, 96, jnp.bfloat16)
  assert mb.unsupported(1000, 1000, 128, jnp.bfloat16) == \
      "the Mosaic backward cannot take length 1000 (needs a multiple of 128)"
  # ragged lengths: fine once padded to a multiple of the step (every pattern is causal)
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # noqa: E402
  assert pm.shape_limits(1000, 1000, 128, jnp.bfloat16, step=128, padded_len=1024) is None
  assert pm.shape_limits(1000, 1000, 128, jnp.bfloat16, step=256, padded_len=1024) is None
  assert pm.shape_limits(1000, 1000, 128, jnp.bfloat16, step=128, padded_len=1088) == \
      "length 1000 padded to 1088 (needs a multiple of 128)"
  assert pallas_gpu.padded_lengths(1000, 1000, 128, jnp.bfloat16) == (1024, 1024)
  assert pallas_gpu.padded_lengths(100, 60, 64, jnp.bfloat16) == (128, 64)
  assert "offsets" in mb.unsupported(1024, 1024, 128, jnp.bfloat16, offsets=True)
  assert "offsets" in mb.unsupported(1024, 2048, 128, jnp.bfloat16)
  # the step follows each kernel's tiles; one list of limits serves the forward and backward
  assert mb.step(mb.MosaicBwdConfig(block_q=64, block_kv=128)) == 256
  for bad in [(240, 40), (236, 24), (232, 16)]:   # over 64K registers; not x8; under 24
    with pytest.raises(ValueError, match=re.escape(f"registers={bad}")):
      mb.MosaicBwdConfig(registers=bad)
  for removed in ("rederive_dq", "p_under_dp"):   # tried and removed on 2026-12-07
    with pytest.raises(TypeError, match=removed):
      mb.MosaicBwdConfig(**{removed: True})
  assert mb.unsupported(1152, 1152, 64, jnp.bfloat16,
                        config=mb.MosaicBwdConfig(block_kv=128)) is not None
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # noqa: E402
  assert pm.fwd_step(pm.MosaicConfig()) == 128
  assert pm.fwd_step(pm.MosaicConfig(block_q=64, block_kv=192)) == 384
  for args in [(1024, 1024, 128, jnp.float32), (1024, 1024, 96, jnp.bfloat16),
               (1000, 1000, 128, jnp.bfloat16)]:
    assert mb.unsupported(*args) == "the Mosaic backward cannot take " + pm.shape_limits(
        *args, step=mb.step())
  with pytest.raises(ValueError, match="the Mosaic forward cannot take length 1000"):
    pm.sparse_attention_fwd(jax.ShapeDtypeStruct((1, 1000, 2, 64), jnp.bfloat16),
                            jax.ShapeDtypeStruct((1, 1000, 2, 64), jnp.bfloat16),
                            jax.ShapeDtypeStruct((1, 1000, 2, 64), jnp.bfloat16),
                            AttentionSpec.full())
  with pytest.raises(pallas_gpu.PallasGpuError, match="bwd_impl"):
    pallas_gpu.TritonConfig(bwd_impl="cuda")
  assert pallas_gpu.TritonConfig().bwd_impl == "auto"
  q, k, v, _ = _inputs(7, 128, 2, 2, 64, jnp.bfloat16)
  for impl in ("mosaic", "mosaic_fused"):
    cfg = pallas_gpu.TritonConfig(bwd_impl=impl)
    with pytest.raises(pallas_gpu.PallasGpuError, match=f"bwd_impl='{impl}' cannot run"):
      jax.grad(lambda q, cfg=cfg: jnp.sum(pallas_gpu.attention(
          q, k, v, AttentionSpec.full(), config=cfg, interpret=True).astype(jnp.float32)))(q)


@pytest.mark.parametrize("bwd_impl,mosaic_applies,expect", [
    ("auto", True, "fused"), ("auto", False, "triton"), ("triton", True, "triton"),
    ("mosaic", True, "mosaic"), ("mosaic_fused", True, "fused")])
def test_bwd_impl_dispatch(monkeypatch, bwd_impl, mosaic_applies, expect):
  """``bwd_impl="auto"`` (the default) takes the fused Mosaic GPU backward exactly where it
  applies.

  Off Hopper the Mosaic kernels cannot run, so the Mosaic-backward verdict and the two Mosaic
  kernels are stood in for; the forward and the Triton backward run in interpret mode."""
  # pylint: disable-next=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb
  real = pallas_gpu.mosaic_unsupported
  def verdict(*a, step=None, **kw):
    if step == mb.step() and kw.get("interpret"):  # the backward's question
      return None if mosaic_applies else "stand-in: does not apply"
    return real(*a, step=step, **kw)
  calls = []
  def fake_dq(q, k, v, do, lse2, delta, spec, config=None, scale=None, segment_ids=None,
              kv_segment_ids=None):
    calls.append("dq")
    return jnp.full_like(q, 7)
  def fake_dkv(q, k, v, do, lse2, delta, spec, config=None, scale=None, segment_ids=None,
               kv_segment_ids=None):
    calls.append("dkv")
    return jnp.full_like(k, 7), jnp.full_like(v, 7)
  def fake_fused(q, k, v, do, lse2, delta, spec, config=None, scale=None, segment_ids=None,
                 kv_segment_ids=None):
    calls.append("fused")
    return jnp.full_like(q, 7), jnp.full_like(k, 7), jnp.full_like(v, 7)
  jax.clear_caches()  # traces cached by earlier calls must not stand in for this one's
  monkeypatch.setattr(pallas_gpu, "mosaic_unsupported", verdict)
  monkeypatch.setattr(mb, "sparse_attention_dq", fake_dq)
  monkeypatch.setattr(mb, "sparse_attention_dkv", fake_dkv)
  monkeypatch.setattr(mb, "sparse_attention_bwd", fake_fused)
  q, k, v, _ = _inputs(9, 128, 4, 2, 64, jnp.float32)
  cfg = pallas_gpu.TritonConfig(bwd_impl=bwd_impl)
  g = jax.grad(lambda q, k, v: jnp.sum(pallas_gpu.attention(
      q, k, v, AttentionSpec.strided(1, 1, block=32), config=cfg, interpret=True)),
               argnums=(0, 1, 2))(q, k, v)
  jax.clear_caches()  # nor may this one's (with the stand-ins) serve later tests
  if expect != "triton":
    assert calls == (["dq", "dkv"] if expect == "mosaic" else ["fused"])
    assert all(bool(jnp.all(x == 7)) for x in g)
  else:
    assert not calls and not any(bool(jnp.all(x == 7)) for x in g)


@pytest.mark.parametrize("fwd_impl,expect", [
    ("auto", "mosaic"), ("mosaic", "mosaic"), ("triton", None)])
def test_fwd_impl_dispatch(monkeypatch, fwd_impl, expect):
  """Each ``fwd_impl`` takes its forward where the Mosaic kernels apply (verdict and kernels
  stood in for, as in ``test_bwd_impl_dispatch``)."""
  # pylint: disable-next=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic as pm
  real = pallas_gpu.mosaic_unsupported
  def verdict(*a, step=None, **kw):
    return None if step is None else real(*a, step=step, **kw)   # only the forward's question
  calls = []
  def fake(name):
    def fwd(q, k, v, spec, scale=None, segment_ids=None, kv_segment_ids=None):
      calls.append(name)
      return jnp.full_like(q, 3), jnp.zeros((q.shape[0], q.shape[2], q.shape[1]), jnp.float32)
    return fwd
  jax.clear_caches()
  monkeypatch.setattr(pallas_gpu, "mosaic_unsupported", verdict)
  monkeypatch.setattr(pm, "sparse_attention_fwd", fake("mosaic"))
  q, k, v, _ = _inputs(10, 128, 4, 2, 64, jnp.float32)
  out = pallas_gpu.attention(q, k, v, AttentionSpec.strided(1, 1, block=32), interpret=True,
                             config=pallas_gpu.TritonConfig(fwd_impl=fwd_impl))
  jax.clear_caches()
  assert calls == ([expect] if expect else [])
  assert bool(jnp.all(out == 3)) == bool(expect)
