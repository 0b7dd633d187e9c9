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

from pallas_kernels import gpu_cudnn
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
  return functools.partial(gpu_cudnn.cudnn_attention, spec=spec, impl="dense", **kw)


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


@pytest.mark.parametrize("spec", SPECS[:3], ids=str)
@pytest.mark.parametrize("with_lse", [False, True])
def test_grads_match_reference(spec, with_lse):
  q, k, v = _qkv(1, T=64)
  w_o = jax.random.normal(jax.random.PRNGKey(5), q.shape)
  w_l = jax.random.normal(jax.random.PRNGKey(6), (1, q.shape[2], q.shape[1]))

  def loss(fn):
    def f(q, k, v):
      if not with_lse:
        return jnp.sum(fn(q, k, v) * w_o)
      o, l = fn(q, k, v, return_lse=True)
      return jnp.sum(o * w_o) + jnp.sum(l * w_l)
    return f

  ref = functools.partial(reference_attention, spec=spec)
  g = jax.jit(jax.grad(loss(_dense(spec)), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_sink_and_window_key_sets_are_disjoint_and_cover_the_pattern():
  spec = AttentionSpec.sink_window(20, 16, 16)
  T = 64
  causal, window, n_sink = gpu_cudnn._plan(spec, T, T, 0, 0)
  main = np.asarray(gpu_cudnn._main_mask(T, T, causal, window))
  sink = np.zeros((T, T), bool)
  sink[window:, :n_sink] = np.asarray(gpu_cudnn._sink_mask(window, T, n_sink, window))
  # Rows before the window length have no sink outside their window: the sink part skips them.
  assert not np.any(np.asarray(gpu_cudnn._sink_mask(0, window, n_sink, window)))
  assert not np.any(main & sink)
  np.testing.assert_array_equal(main | sink, spec.allowed(np.arange(T)[:, None],
                                                          np.arange(T)[None, :]))


def test_widened_backward_carries_the_lse_cotangent():
  """The head-dim widening used for cuDNN (delta computed from (dO, O) inside the kernel)."""
  q, k, v = _qkv(2, T=32)
  scale = 0.25
  mask = gpu_cudnn._main_mask(32, 32, True, 8)
  o, lse = gpu_cudnn._dense_fwd(q, k, v, mask, scale=scale)
  do = jax.random.normal(jax.random.PRNGKey(3), o.shape)
  dlse = jax.random.normal(jax.random.PRNGKey(4), lse.shape)
  plain = lambda *a: gpu_cudnn._dense_bwd(*a, None, mask, scale=scale)
  got = jax.jit(functools.partial(gpu_cudnn._widened_bwd, plain))(q, k, v, o, lse, do, dlse)
  want = jax.jit(functools.partial(gpu_cudnn._dense_bwd, mask=mask, scale=scale))(
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
  chk = functools.partial(gpu_cudnn.why_unsupported, check_platform=False)
  sw = AttentionSpec.sink_window(64, 128)
  assert chk(q, k, k, sw) is None
  assert chk(q, k, k, AttentionSpec.full()) is None
  assert "strided" in chk(q, k, k, AttentionSpec.strided(2, 4))
  assert "segment" in chk(q, k, k, sw, segment_ids=jnp.zeros((1, 256), jnp.int32))
  assert "offset" in chk(q, k, k, sw, q_offset=128, kv_offset=128)
  assert "diagonal" in chk(q, k, k, AttentionSpec.full(), q_offset=64)
  assert chk(q, k, k, AttentionSpec.full(), q_offset=256) is None
  f32 = jax.ShapeDtypeStruct((1, 256, 8, 128), jnp.float32)
  assert "bf16" in chk(f32, f32, f32, sw)
  assert "head_dim" in chk(bf(1, 256, 8, 20), bf(1, 256, 2, 20), bf(1, 256, 2, 20), sw)
  if jax.default_backend() != "gpu":
    assert "GPU" in gpu_cudnn.why_unsupported(q, k, k, sw)
    with pytest.raises(gpu_cudnn.CudnnError, match="GPU"):
      gpu_cudnn.cudnn_attention(jnp.zeros(q.shape, q.dtype), jnp.zeros(k.shape, k.dtype),
                                jnp.zeros(k.shape, k.dtype), sw)


def test_registry_supports_uses_static_facts():
  from pallas_kernels import api, gpu_native  # pylint: disable=g-import-not-at-top
  sh = api.AttentionShapes(1, 4096, 4096, 32, 8, 128, 0, 0, False)
  sw = AttentionSpec.sink_window(64, 1024)
  assert "GPU" in gpu_cudnn.registry_supports("cpu", sw, sh, jnp.bfloat16)
  assert "GPU" in gpu_native.registry_supports("tpu", sw, sh, jnp.bfloat16)
  reason = functools.partial(gpu_cudnn.unsupported_reason, q_len=4096, kv_len=4096, q_heads=32,
                             kv_heads=8, head_dim=128, dtype=jnp.bfloat16, check_platform=False)
  assert reason(sw) is None
  assert "segment" in reason(sw, has_segment_ids=True)
  native = functools.partial(gpu_native.unsupported_reason, q_heads=32, kv_heads=8, head_dim=128,
                             check_platform=False)
  assert native(dtype=jnp.bfloat16) is None
  assert "bf16" in native(dtype=jnp.float32)
