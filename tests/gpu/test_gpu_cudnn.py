"""cuDNN backend on a real GPU: window off-by-one, fp32 lse, sink merge, gradients (bf16).

Run on the device machine: ``python -m pytest -q -m gpu tests/gpu/test_gpu_cudnn.py``.
Errors are relative Frobenius norms against the fp32 dense reference on the same bf16 inputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.backends import cudnn, cudnn_packed
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(cudnn.why_unsupported(
        jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16),
        jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16),
        jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16), "full") is not None,
        reason="needs a CUDA GPU with cuDNN >= 9"),
]


def _qkv(seed, T=1024, Hq=4, Hkv=2, D=128):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  mk = lambda key, h: jax.random.normal(key, (1, T, h, D), jnp.float32).astype(jnp.bfloat16)
  return mk(ks[0], Hq), mk(ks[1], Hkv), mk(ks[2], Hkv)


def _rel(a, b):
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def _f32(*xs):
  return [x.astype(jnp.float32) for x in xs]


def test_public_api_window_is_query_plus_l_earlier_tokens():
  """jax.nn.dot_product_attention local_window_size=(W-1, 0), is_causal=True == spec window W."""
  q, k, v = _qkv(0, T=512, Hq=2, Hkv=2)
  W = 128
  spec = AttentionSpec.sink_window(0, W)
  ref = reference_attention(*_f32(q, k, v), spec)
  got = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(W - 1, 0),
                                     implementation="cudnn")
  assert _rel(got, ref) < 1e-2
  off_by_one = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(W, 0),
                                            implementation="cudnn")
  assert _rel(off_by_one, ref) > 3 * _rel(got, ref)


@pytest.mark.parametrize("spec", [AttentionSpec.full(), AttentionSpec.sink_window(0, 256),
                                  AttentionSpec.sink_window(64, 256),
                                  AttentionSpec.sink_window(200, 128)], ids=str)
def test_forward_and_fp32_lse(spec):
  q, k, v = _qkv(1)
  out, lse = cudnn.cudnn_attention(q, k, v, spec, return_lse=True)
  ref, ref_lse = reference_attention(*_f32(q, k, v), spec, return_lse=True)
  assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
  assert _rel(out, ref) < 1e-2
  np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), atol=2e-2, rtol=2e-3)


def _loss(with_lse, shape):
  """``loss(fn, q, k, v)``: sum(out * w_o) (+ sum(lse * w_l)), fp32, fixed random weights."""
  w_o = jax.random.normal(jax.random.PRNGKey(9), shape, jnp.float32)
  w_l = jax.random.normal(jax.random.PRNGKey(10), (shape[0], shape[2], shape[1]), jnp.float32)

  def loss(fn, q, k, v):
    if not with_lse:
      return jnp.sum(fn(q, k, v).astype(jnp.float32) * w_o)
    o, l = fn(q, k, v, return_lse=True)
    return jnp.sum(o.astype(jnp.float32) * w_o) + jnp.sum(l * w_l)
  return loss


@pytest.mark.parametrize("spec", [AttentionSpec.full(), AttentionSpec.sink_window(64, 256)],
                         ids=str)
@pytest.mark.parametrize("with_lse", [False, True])
def test_grads(spec, with_lse):
  q, k, v = _qkv(2)
  loss = _loss(with_lse, q.shape)
  mine = functools.partial(cudnn.cudnn_attention, spec=spec)
  ref = functools.partial(reference_attention, spec=spec)
  g = jax.grad(functools.partial(loss, mine), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(functools.partial(loss, ref), argnums=(0, 1, 2))(*_f32(q, k, v))
  for name, a, b in zip("qkv", g, g_ref):
    assert _rel(a, b) < 2e-2, name


def test_full_offdiagonal_chunk():
  q, k, v = _qkv(3, T=512)
  spec = AttentionSpec.full()
  out, lse = cudnn.cudnn_attention(q, k, v, spec, q_offset=512, kv_offset=0, return_lse=True)
  ref, ref_lse = reference_attention(*_f32(q, k, v), spec, q_offset=512, return_lse=True)
  assert _rel(out, ref) < 1e-2
  np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), atol=2e-2, rtol=2e-3)


# ----------------------------------------------------------------------------- packed documents
def _packed_problem():
  sds = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16)
  return cudnn.why_unsupported(sds, sds, sds, "full",
                                   segment_ids=jax.ShapeDtypeStruct((1, 256), jnp.int32))


needs_packed = pytest.mark.skipif(_packed_problem() is not None,
                                  reason=f"cuDNN packed layout: {_packed_problem()}")


def _packed_seg(T, lengths_per_row):
  """Segment ids [B, T]: ids 1.. for the given lengths, the rest padding (id 0, at the end)."""
  rows = []
  for lengths in lengths_per_row:
    ids = sum(([i + 1] * n for i, n in enumerate(lengths)), [])
    rows.append(ids + [0] * (T - len(ids)))
  return jnp.asarray(rows, jnp.int32)


def _packed_case(T, seed=20):
  """2 rows, GQA 4/2 heads: row 0 has 7 documents + padding, row 1 has 3 documents."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  mk = lambda key, h: jax.random.normal(key, (2, T, h, 128), jnp.float32).astype(jnp.bfloat16)
  u = T // 16
  seg = _packed_seg(T, [[3 * u, u + 5, 2 * u, 7, u - 7, 4 * u, 2 * u], [5 * u + 1, 9 * u, 2 * u - 1]])
  return mk(ks[0], 4), mk(ks[1], 2), mk(ks[2], 2), seg


@needs_packed
def test_packed_stats_layout():
  """Diagnostic: cuDNN's packed softmax stats [B*M, H, T] hold lse at (segment slot, head,
  position in segment) -- the layout ``_stats_to_lse`` assumes. Names the layout that matches."""
  T, M = 2048, 8
  q, k, v, seg = _packed_case(T)
  spec = AttentionSpec.full()
  pk = cudnn_packed._packing(seg, seg, M)
  _, stats = jax.jit(functools.partial(cudnn_packed._cudnn_fwd_packed, scale=128 ** -0.5,
                                       causal=True, window=None))(q, k, v, pk)
  _, ref_lse = reference_attention(*_f32(q, k, v), spec, segment_ids=seg, return_lse=True)
  ref_lse = np.asarray(ref_lse)
  stats = np.asarray(stats)
  b, h, t = ref_lse.shape
  guesses = {"segment_slot_major (assumed)": np.asarray(cudnn_packed._stats_to_lse(stats, pk.slot))}
  flat = stats.reshape(-1)
  guesses["token_major_thd [B*T, H]"] = np.transpose(
      flat[:b * t * h].reshape(b, t, h), (0, 2, 1))
  guesses["per_row_absolute [B, M, H, T][:, 0]"] = stats.reshape(b, M, h, t)[:, 0]
  guesses["head_major_thd [H, B*T]"] = np.transpose(
      flat[:h * b * t].reshape(h, b, t), (1, 0, 2))
  errs = {name: float(np.max(np.abs(g - ref_lse))) for name, g in guesses.items()}
  assert errs["segment_slot_major (assumed)"] < 5e-2, f"stats layout errors: {errs}"


@needs_packed
@pytest.mark.parametrize("spec,T", [(AttentionSpec.full(), 2048), (AttentionSpec.full(), 8192),
                                    (AttentionSpec.sink_window(64, 256), 2048),
                                    (AttentionSpec.sink_window(128, 1024), 8192)], ids=str)
def test_packed_forward_and_lse(spec, T):
  q, k, v, seg = _packed_case(T)
  out, lse = cudnn.cudnn_attention(q, k, v, spec, segment_ids=seg, return_lse=True,
                                       max_segments=16)
  ref, ref_lse = reference_attention(*_f32(q, k, v), spec, segment_ids=seg, return_lse=True)
  assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
  assert _rel(out, ref) < 1e-2
  np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), atol=2e-2, rtol=2e-3)


@needs_packed
@pytest.mark.parametrize("spec", [AttentionSpec.full(), AttentionSpec.sink_window(64, 256)],
                         ids=str)
@pytest.mark.parametrize("with_lse", [False, True])
def test_packed_grads(spec, with_lse):
  T = 2048
  q, k, v, seg = _packed_case(T, seed=21)
  loss = _loss(with_lse, q.shape)
  mine = functools.partial(cudnn.cudnn_attention, spec=spec, segment_ids=seg,
                           max_segments=16)
  ref = functools.partial(reference_attention, spec=spec, segment_ids=seg)
  g = jax.jit(jax.grad(functools.partial(loss, mine), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.grad(functools.partial(loss, ref), argnums=(0, 1, 2))(*_f32(q, k, v))
  for name, a, b in zip("qkv", g, g_ref):
    assert _rel(a, b) < 2e-2, name


@needs_packed
def test_packed_fallback_when_segments_exceed_max():
  """Row 0 has 8 segments (7 documents + padding) > max_segments=4: the Triton branch runs."""
  T = 2048
  spec = AttentionSpec.sink_window(64, 256)
  q, k, v, seg = _packed_case(T, seed=22)
  assert not bool(cudnn_packed._packing(seg, seg, 4).ok)
  w_o = jax.random.normal(jax.random.PRNGKey(11), q.shape, jnp.float32)
  f = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w_o)
  mine = functools.partial(cudnn.cudnn_attention, spec=spec, segment_ids=seg, max_segments=4)
  ref = functools.partial(reference_attention, spec=spec, segment_ids=seg)
  assert _rel(mine(q, k, v), ref(*_f32(q, k, v))) < 1e-2
  g = jax.jit(jax.grad(f(mine), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.grad(f(ref), argnums=(0, 1, 2))(*_f32(q, k, v))
  for name, a, b in zip("qkv", g, g_ref):
    assert _rel(a, b) < 2e-2, name
