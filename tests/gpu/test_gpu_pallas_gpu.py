"""GPU checks of the Pallas (Triton-lowered) block-sparse attention at realistic shapes.

Compared with the dense fp32 reference (on upcast inputs) at moderate lengths, and with the blocked
XLA backend at a long one when that module exists. Errors are relative Frobenius norms; bf16
operands land between 1e-3 and 1e-2. Imports only ``pallas_kernels`` (the device image has no
grain / ml_collections).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.backends import pallas_gpu
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

pytestmark = pytest.mark.gpu


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _inputs(seed, B, T, Hq, Hkv, D, dtype, Tk=None):
  Tk = T if Tk is None else Tk
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(ks[0], (B, T, Hq, D), jnp.float32).astype(dtype)
  k = jax.random.normal(ks[1], (B, Tk, Hkv, D), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (B, Tk, Hkv, D), jnp.float32).astype(dtype)
  w = jax.random.normal(ks[3], (B, T, Hq, D), jnp.float32)
  return q, k, v, w


def _grads(fn, q, k, v, w):
  def loss(q, k, v):
    out, lse = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * w) + 0.1 * jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _check(spec, q, k, v, w, *, tol_out, tol_grad, config=None, **kw):
  ours = lambda q, k, v: pallas_gpu.attention(  # noqa: E731
      q, k, v, spec, return_lse=True, config=config, **kw)
  ref = lambda q, k, v: reference_attention(  # noqa: E731
      q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), spec, return_lse=True,
      **kw)
  out, lse = jax.jit(ours)(q, k, v)
  with jax.default_matmul_precision("float32"):  # XLA's GPU default for f32 dots is TF32
    rout, rlse = jax.jit(ref)(q, k, v)
    _, rg = _grads(ref, q, k, v, w)
  assert out.dtype == q.dtype and out.shape == q.shape
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  np.testing.assert_array_equal(np.isinf(np.asarray(lse)), np.isinf(np.asarray(rlse)))
  fin = np.isfinite(np.asarray(rlse))
  assert _rel(np.asarray(lse)[fin], np.asarray(rlse)[fin]) < 1e-3
  assert _rel(out, rout) < tol_out
  _, g = _grads(ours, q, k, v, w)
  for name, a, b in zip("qkv", g, rg):
    assert a.dtype == q.dtype
    assert _rel(a, b) < tol_grad, f"d{name}: {_rel(a, b)}"


@pytest.mark.parametrize("impl", ["mosaic", "triton"])
@pytest.mark.parametrize("spec", ["sink_window:64:512", "strided:4:4", "full"])
@pytest.mark.parametrize("D", [64, 128])
def test_bf16_vs_reference(spec, D, impl):
  """Each forward (Mosaic GPU, Triton) with the Triton backward; GQA group of 4."""
  q, k, v, w = _inputs(0, 1, 2048, 8, 2, D, jnp.bfloat16)
  _check(AttentionSpec.parse(spec), q, k, v, w, tol_out=1e-2, tol_grad=2e-2,
         config=pallas_gpu.TritonConfig(fwd_impl=impl, bwd_impl="triton"))


@pytest.mark.parametrize("spec", ["sink_window:64:512", "strided:4:4", "full"])
@pytest.mark.parametrize("D,Hkv", [(64, 2), (128, 8), (128, 2)])
def test_mosaic_fused_bwd_bf16_vs_reference(spec, D, Hkv):
  """The single-pass Mosaic GPU backward (``bwd_impl="mosaic_fused"``, what ``"auto"`` takes on
  Hopper: dQ reduce-added in fp32 from the dK/dV kernel), MHA and GQA; L=2048 has 16 KV-block
  CTAs adding into each query tile."""
  q, k, v, w = _inputs(6, 1, 2048, 8, Hkv, D, jnp.bfloat16)
  _check(AttentionSpec.parse(spec), q, k, v, w, tol_out=1e-2, tol_grad=2e-2,
         config=pallas_gpu.TritonConfig(bwd_impl="mosaic_fused"))


@pytest.mark.parametrize("spec", ["sink_window:64:512", "strided:4:4", "full"])
@pytest.mark.parametrize("D,Hkv", [(64, 2), (128, 8), (128, 2)])
def test_mosaic_bwd_bf16_vs_reference(spec, D, Hkv):
  """The two-kernel Mosaic GPU backward (``bwd_impl="mosaic"``: dQ and dK/dV; ``"auto"`` took it
  on Hopper until 2026-12-06), MHA and GQA."""
  q, k, v, w = _inputs(4, 1, 2048, 8, Hkv, D, jnp.bfloat16)
  _check(AttentionSpec.parse(spec), q, k, v, w, tol_out=1e-2, tol_grad=2e-2,
         config=pallas_gpu.TritonConfig(bwd_impl="mosaic"))


@pytest.mark.parametrize("seg", [False, True])
def test_default_backward_is_mosaic_where_it_applies(seg):
  """``bwd_impl="auto"`` (the default) gives the fused Mosaic backward's gradients on a Hopper
  GPU, with and without segment ids: dK and dV bit for bit, dQ (fp32 reduce-adds in no fixed
  order) to fp32 rounding before its bf16 cast."""
  if getattr(jax.devices()[0], "compute_capability", None) != "9.0":
    pytest.skip("the Mosaic GPU kernels need a Hopper GPU")
  q, k, v, w = _inputs(8, 1, 1024, 4, 2, 128, jnp.bfloat16)
  kw = dict(segment_ids=jnp.zeros((1, 1024), jnp.int32).at[:, 600:].set(1)) if seg else {}
  spec = AttentionSpec.parse("strided:4:4")
  def grads(bwd_impl):
    cfg = pallas_gpu.TritonConfig(bwd_impl=bwd_impl)
    return _grads(lambda q, k, v: pallas_gpu.attention(q, k, v, spec, return_lse=True, config=cfg,
                                                       **kw), q, k, v, w)[1]
  (dq, dk, dv), (dq_w, dk_w, dv_w) = grads("auto"), grads("mosaic_fused")
  for a, b in ((dk, dk_w), (dv, dv_w)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert _rel(dq, dq_w) < 1e-2


def test_mosaic_bwd_refuses_offsets():
  q, k, v, w = _inputs(5, 1, 1024, 4, 4, 128, jnp.bfloat16)
  cfg = pallas_gpu.TritonConfig(bwd_impl="mosaic")
  with pytest.raises(pallas_gpu.PallasGpuError, match="bwd_impl='mosaic' cannot run"):
    jax.grad(lambda q: jnp.sum(pallas_gpu.attention(
        q, k, v, "full", q_offset=128, kv_offset=128, config=cfg).astype(jnp.float32)))(q)


@pytest.mark.parametrize("impls", [("mosaic", "mosaic"), ("mosaic", "mosaic_fused")])
@pytest.mark.parametrize("spec", ["sink_window:64:512", "strided:4:4", "full"])
def test_mosaic_packed_ragged_gqa(spec, impls):
  """The Mosaic kernels on packed rows (segment ids; boundaries off the tile grid, a
  one-token document, a batch row with other documents) at a ragged length (2000, padded to
  2048), GQA 8/2: cross-document tiles are skipped, straddling ones masked by segment id."""
  q, k, v, w = _inputs(11, 2, 2000, 8, 2, 128, jnp.bfloat16)
  seg = np.zeros((2, 2000), np.int32)
  seg[0, 700:] = 1
  seg[0, 701:] = 2
  seg[0, 1333:] = 3
  seg[1, 1024:] = 5
  cfg = pallas_gpu.TritonConfig(fwd_impl=impls[0], bwd_impl=impls[1])
  _check(AttentionSpec.parse(spec), q, k, v, w, tol_out=1e-2, tol_grad=2e-2, config=cfg,
         segment_ids=jnp.asarray(seg))


def test_bf16_segments_ragged_offsets():
  q, k, v, w = _inputs(1, 2, 1500, 4, 4, 128, jnp.bfloat16, Tk=1700)
  seg = np.zeros((2, 1500), np.int32)
  seg[:, 600:] = 1
  seg[1, 1100:] = 2
  kvseg = np.zeros((2, 1700), np.int32)
  kvseg[:, 800:] = 1
  kvseg[1, 1300:] = 2
  _check(AttentionSpec.sink_window(32, 256, 64), q, k, v, w, tol_out=1e-2, tol_grad=2e-2,
         segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(kvseg), q_offset=200,
         kv_offset=0)


def test_fp32_strided_gqa():
  q, k, v, w = _inputs(2, 1, 1024, 6, 2, 64, jnp.float32)
  _check(AttentionSpec.strided(2, 3, 64), q, k, v, w, tol_out=1e-4, tol_grad=1e-4)


def test_vs_xla_blocked_long():
  xla_blocked = pytest.importorskip("pallas_kernels.backends.xla")
  fn = getattr(xla_blocked, "attention", None) or getattr(xla_blocked, "xla_attention", None)
  if fn is None:
    pytest.skip("pallas_kernels.backends.xla has no attention entry point yet")
  spec = AttentionSpec.sink_window(64, 4096)
  q, k, v, w = _inputs(3, 1, 16384, 4, 4, 128, jnp.bfloat16)
  ours = jax.jit(lambda q, k, v: pallas_gpu.attention(q, k, v, spec))(q, k, v)
  theirs = jax.jit(lambda q, k, v: fn(q, k, v, spec))(q, k, v)
  assert _rel(ours, theirs) < 1e-2
  gl = lambda f: jax.jit(jax.grad(  # noqa: E731
      lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(gl(lambda q, k, v: pallas_gpu.attention(q, k, v, spec)),
                  gl(lambda q, k, v: fn(q, k, v, spec))):
    assert _rel(a, b) < 2e-2


def test_registry_dispatch():
  from pallas_kernels import api  # pylint: disable=g-import-not-at-top
  spec = AttentionSpec.sink_window(64, 512)
  q, k, v, _ = _inputs(4, 1, 1024, 4, 2, 128, jnp.bfloat16)
  via_api = api.attention(q, k, v, spec, backend="pallas_gpu")
  direct = pallas_gpu.attention(q, k, v, spec)
  np.testing.assert_array_equal(np.asarray(via_api, np.float32), np.asarray(direct, np.float32))


@pytest.mark.parametrize("seg", [False, True], ids=["", "segments"])
@pytest.mark.parametrize("fused", [False, True], ids=["dq_dkv", "fused"])
@pytest.mark.parametrize("over", [dict(registers=(232, 40)), dict(rederive=False)],
                         ids=["regs232", "no_rederive"])
def test_mosaic_bwd_config_variants_match_default(over, fused, seg):
  """The other ``MosaicBwdConfig`` settings give the default kernels' gradients (which the tests
  above hold to the reference), GQA 8/2, with and without segment ids."""
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic_bwd as mb  # pylint: disable=g-import-not-at-top
  spec = AttentionSpec.parse("sink_window:64:512")
  q, k, v, w = _inputs(8, 1, 2048, 8, 2, 128, jnp.bfloat16)
  ids = np.zeros((1, 2048), np.int32)
  ids[0, 700:] = 1
  ids[0, 1333:] = 2
  kw = dict(segment_ids=jnp.asarray(ids), kv_segment_ids=jnp.asarray(ids)) if seg else {}
  from pallas_kernels.backends._frame import bwd_row_stats  # pylint: disable=g-import-not-at-top
  out, lse2 = pm.sparse_attention_fwd(q, k, v, spec, **kw)
  do = w.astype(jnp.bfloat16)
  lse2, delta = bwd_row_stats(out, lse2, do, None)   # as pallas_gpu's backward passes them

  base, var = (mb.gradients(q, k, v, do, lse2, delta, spec, cfg, fused=fused, **kw)
               for cfg in (mb.MosaicBwdConfig(), mb.MosaicBwdConfig(**over)))
  for name, a, b in zip("qkv", var, base):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert _rel(a, b) < 1e-3, f"d{name}: {_rel(a, b)}"


@pytest.mark.parametrize("spec,seg,over", [
    ("full", False, dict(longest_first=False)),
    ("full", True, dict(longest_first=False)),
    ("strided:4:4", False, dict(longest_first=False)),
    ("sink_window:64:512", False, dict(longest_first=False)),
    ("full", False, dict(overlap=True)),
    ("full", True, dict(overlap=True, persistent_ctas=132)),
    ("strided:4:4", False, dict(persistent_ctas=132)),
    ("sink_window:64:512", False, dict(overlap=True)),
    ("sink_window:64:512", True, dict(persistent_ctas=7)),
], ids=["full-shortest_first", "full-segments-shortest_first", "strided-shortest_first",
        "sink_window-shortest_first", "full-overlap", "full-segments-overlap-persistent",
        "strided-persistent", "sink_window-overlap", "sink_window-segments-persistent7"])
def test_mosaic_forward_schedule_options_match(spec, seg, over):
  """``MosaicConfig`` schedule options against the default forward and the reference, GQA 8/2,
  with and without segment ids: ``longest_first=False`` (the other CTA order; each CTA writes
  only its own rows, so bit-equal), ``overlap`` (FA4's schedule: intra-warpgroup overlap and
  named-barrier turns; the same sums in another order) and ``persistent_ctas`` (the same sums
  per row: bit-equal without ``overlap``)."""
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # pylint: disable=g-import-not-at-top
  spec = AttentionSpec.parse(spec)
  q, k, v, _ = _inputs(9, 1, 2048, 8, 2, 128, jnp.bfloat16)
  ids = np.zeros((1, 2048), np.int32)
  ids[0, 700:] = 1
  kw = dict(segment_ids=jnp.asarray(ids), kv_segment_ids=jnp.asarray(ids)) if seg else {}
  base, var = (pm.sparse_attention_fwd(q, k, v, spec, pm.MosaicConfig(**o), **kw)
               for o in ({}, over))
  if over.get("overlap"):
    assert _rel(var[0], base[0]) < 5e-3
    np.testing.assert_allclose(np.asarray(var[1]), np.asarray(base[1]), rtol=0, atol=1e-3)
  else:
    np.testing.assert_array_equal(np.asarray(var[0], np.float32), np.asarray(base[0], np.float32))
    np.testing.assert_array_equal(np.asarray(var[1]), np.asarray(base[1]))
  with jax.default_matmul_precision("float32"):
    ref = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                              v.astype(jnp.float32), spec, **kw)
  assert _rel(var[0], ref) < 1e-2
