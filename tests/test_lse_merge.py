"""lse_merge: partial attentions over disjoint key sets merge into the exact attention (CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import lse_merge
from pallas_kernels.reference import reference_attention as _reference_attention
from pallas_kernels.spec import AttentionSpec

# One compile per shape instead of one per primitive (eager): keeps the file fast on a busy CPU.
reference_attention = jax.jit(_reference_attention,
                              static_argnames=("spec", "q_offset", "kv_offset", "return_lse"))


def _qkv(seed, B=1, T=64, Hq=4, Hkv=2, D=16, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(kq, (B, T, Hq, D), dtype)
  k = jax.random.normal(kk, (B, T, Hkv, D), dtype)
  v = jax.random.normal(kv, (B, T, Hkv, D), dtype)
  return q, k, v


def _split_attention(q, k, v, spec, cuts):
  """Reference attention over consecutive key chunks [cuts[i], cuts[i+1]), merged."""
  outs, lses = [], []
  for a, b in zip(cuts[:-1], cuts[1:]):
    o, l = reference_attention(q, k[:, a:b], v[:, a:b], spec, kv_offset=a, return_lse=True)
    outs.append(o)
    lses.append(l)
  return lse_merge.merge(outs, lses)


@pytest.mark.parametrize("spec", [AttentionSpec.full(16), AttentionSpec.sink_window(4, 16, 16),
                                  AttentionSpec.strided(2, 3, 16)])
def test_merge_matches_full_attention(spec):
  q, k, v = _qkv(0)
  out, lse = _split_attention(q, k, v, spec, [0, 5, 32, 64])
  ref, ref_lse = reference_attention(q, k, v, spec, return_lse=True)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=2e-5)


def test_empty_rows_and_all_empty():
  # Causal chunks: queries before a chunk's start see nothing there (-inf rows in that part).
  q, k, v = _qkv(1, T=32)
  spec = AttentionSpec.full(16)
  o2, l2 = reference_attention(q, k[:, 16:], v[:, 16:], spec, kv_offset=16, return_lse=True)
  assert bool(jnp.all(jnp.isinf(l2[:, :, :16])))
  # A part that is empty everywhere merges to the other part exactly.
  o1, l1 = reference_attention(q, k, v, spec, return_lse=True)
  empty_l = jnp.full_like(l1, -jnp.inf)
  out, lse = lse_merge.merge([o1, jnp.zeros_like(o1)], [l1, empty_l])
  np.testing.assert_allclose(out, o1, atol=1e-6)
  np.testing.assert_allclose(lse, l1, atol=1e-6)
  # Every part empty: zero output, -inf lse, no NaN.
  out, lse = lse_merge.merge([o1, o2], [empty_l, empty_l])
  assert bool(jnp.all(out == 0)) and bool(jnp.all(jnp.isneginf(lse)))


def test_merge_is_order_invariant_and_single_part_identity():
  q, k, v = _qkv(2)
  spec = AttentionSpec.full(16)
  a = reference_attention(q, k[:, :20], v[:, :20], spec, return_lse=True)
  b = reference_attention(q, k[:, 20:], v[:, 20:], spec, kv_offset=20, return_lse=True)
  o_ab, l_ab = lse_merge.merge([a[0], b[0]], [a[1], b[1]])
  o_ba, l_ba = lse_merge.merge([b[0], a[0]], [b[1], a[1]])
  np.testing.assert_allclose(o_ab, o_ba, atol=1e-6)
  np.testing.assert_allclose(l_ab, l_ba, atol=1e-6)
  o1, l1 = lse_merge.merge([a[0]], [a[1]])
  np.testing.assert_allclose(o1, a[0], atol=1e-6)


def test_grads_match_reference():
  """Gradients of a loss using both the output and the lse, through the merge."""
  q, k, v = _qkv(3, T=48)
  spec = AttentionSpec.sink_window(4, 16, 16)
  w_o = jax.random.normal(jax.random.PRNGKey(7), q.shape)
  w_l = jax.random.normal(jax.random.PRNGKey(8), (q.shape[0], q.shape[2], q.shape[1]))

  def loss(fn):
    def f(q, k, v):
      o, l = fn(q, k, v)
      return jnp.sum(o * w_o) + jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0) * w_l)
    return f

  merged = lambda q, k, v: _split_attention(q, k, v, spec, [0, 7, 30, 48])
  ref = lambda q, k, v: reference_attention(q, k, v, spec, return_lse=True)
  g = jax.jit(jax.grad(loss(merged), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, g_ref):
    assert bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5)


def test_bf16_parts_accumulate_in_fp32():
  q, k, v = _qkv(4, dtype=jnp.bfloat16)
  spec = AttentionSpec.full(16)
  out, lse = _split_attention(q, k, v, spec, [0, 16, 64])
  assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
  ref = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                            spec)
  err = jnp.linalg.norm((out.astype(jnp.float32) - ref).ravel()) / jnp.linalg.norm(ref.ravel())
  assert float(err) < 1e-2


def test_delta_folds_lse_cotangent():
  o = jnp.ones((1, 3, 2, 4))
  do = jnp.full((1, 3, 2, 4), 0.5)
  dl = jnp.full((1, 2, 3), 0.25)
  np.testing.assert_allclose(lse_merge.delta(o, do), 2.0)
  np.testing.assert_allclose(lse_merge.delta(o, do, dl), 1.75)


def test_shape_errors():
  o = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match="as many"):
    lse_merge.merge([o], [])
  with pytest.raises(ValueError, match=r"\[B, H, T\]"):
    lse_merge.merge([o], [jnp.zeros((1, 4, 2))])
