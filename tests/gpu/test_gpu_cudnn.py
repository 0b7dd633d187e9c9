"""cuDNN backend on a real GPU: window off-by-one, fp32 lse, sink merge, gradients (bf16).

Run on the device machine: ``python -m pytest -q -m gpu tests/gpu/test_gpu_cudnn.py``.
Errors are relative Frobenius norms against the fp32 dense reference on the same bf16 inputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gpu_cudnn
from pallas_kernels.reference import reference_attention
from pallas_kernels.spec import AttentionSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpu_cudnn.why_unsupported(
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
  out, lse = gpu_cudnn.cudnn_attention(q, k, v, spec, return_lse=True)
  ref, ref_lse = reference_attention(*_f32(q, k, v), spec, return_lse=True)
  assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
  assert _rel(out, ref) < 1e-2
  np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), atol=2e-2, rtol=2e-3)


@pytest.mark.parametrize("spec", [AttentionSpec.full(), AttentionSpec.sink_window(64, 256)],
                         ids=str)
@pytest.mark.parametrize("with_lse", [False, True])
def test_grads(spec, with_lse):
  q, k, v = _qkv(2)
  w_o = jax.random.normal(jax.random.PRNGKey(9), q.shape, jnp.float32)
  w_l = jax.random.normal(jax.random.PRNGKey(10), (1, q.shape[2], q.shape[1]), jnp.float32)

  def loss(fn, q, k, v):
    if not with_lse:
      return jnp.sum(fn(q, k, v).astype(jnp.float32) * w_o)
    o, l = fn(q, k, v, return_lse=True)
    return jnp.sum(o.astype(jnp.float32) * w_o) + jnp.sum(l * w_l)

  mine = functools.partial(gpu_cudnn.cudnn_attention, spec=spec)
  ref = functools.partial(reference_attention, spec=spec)
  g = jax.grad(functools.partial(loss, mine), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(functools.partial(loss, ref), argnums=(0, 1, 2))(*_f32(q, k, v))
  for name, a, b in zip("qkv", g, g_ref):
    assert _rel(a, b) < 2e-2, name


def test_full_offdiagonal_chunk():
  q, k, v = _qkv(3, T=512)
  spec = AttentionSpec.full()
  out, lse = gpu_cudnn.cudnn_attention(q, k, v, spec, q_offset=512, kv_offset=0, return_lse=True)
  ref, ref_lse = reference_attention(*_f32(q, k, v), spec, q_offset=512, return_lse=True)
  assert _rel(out, ref) < 1e-2
  np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), atol=2e-2, rtol=2e-3)
