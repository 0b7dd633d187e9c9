"""pallas_kernels.decode: split-K decode and chunk attention against a dense reference.

K/V are head-major, ``[B, Hkv, S, D]`` (the cache layout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import decode as dec
from pallas_kernels.lse_merge import merge_forward
from pallas_kernels.spec import AttentionSpec

SPECS = [AttentionSpec.full(16), AttentionSpec.sink_window(4, 32, 16),
         AttentionSpec.strided(2, 3, 16)]


def dense(q, k, v, spec, q_pos, kv_pos, scale):
  """Dense fp64 reference on explicit positions: (out [B,T,Hq,D], lse [B,Hq,T])."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, Hq, D = q.shape
  G = Hq // k.shape[1]
  kk = np.repeat(k.transpose(0, 2, 1, 3), G, axis=2)       # [B, S, Hq, D]
  vv = np.repeat(v.transpose(0, 2, 1, 3), G, axis=2)
  s = np.einsum("bthd,bshd->bhts", q, kk) * scale
  qp, kp = np.asarray(q_pos)[:, :, None], np.asarray(kv_pos)[:, None, :]
  vis = (kp >= 0) & spec.allowed(qp, kp)
  s = np.where(vis[:, None], s, -np.inf)
  m = s.max(-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  p = np.where(vis[:, None], np.exp(s - m), 0.0)
  l = p.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshd->bthd", p / np.where(l > 0, l, 1), vv)
  lse = np.where(l[..., 0] > 0, np.log(np.where(l[..., 0] > 0, l[..., 0], 1)) + m[..., 0],
                 -np.inf)
  return out, lse


def random_case(seed, B=2, T=1, Hq=4, Hkv=2, D=8, S=64):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, T, Hq, D)).astype(np.float32)
  k = rng.standard_normal((B, Hkv, S, D)).astype(np.float32)
  v = rng.standard_normal((B, Hkv, S, D)).astype(np.float32)
  # A shuffled cache: every slot holds a distinct position < 100 or is empty (-1).
  kv_pos = np.stack([rng.permutation(100)[:S] for _ in range(B)]).astype(np.int32)
  kv_pos[:, ::7] = -1
  q_pos = np.stack([np.sort(rng.integers(60, 100, T)) for _ in range(B)]).astype(np.int32)
  return q, k, v, q_pos, kv_pos


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.parametrize("splits", [1, 16])
def test_decode_matches_reference_gqa_split_k(spec, splits):
  q, k, v, q_pos, kv_pos = random_case(splits, T=2)
  out, lse = dec.decode_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), spec,
                                  q_pos=jnp.asarray(q_pos), kv_pos=jnp.asarray(kv_pos),
                                  num_splits=splits, return_lse=True, impl="xla")
  ref_out, ref_lse = dense(q, k, v, spec, q_pos, kv_pos, 8 ** -0.5)
  np.testing.assert_allclose(np.asarray(out), ref_out, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(lse), ref_lse, atol=2e-5, rtol=2e-5)


def test_decode_row_that_sees_nothing_is_zero_with_neg_inf_lse():
  q, k, v, q_pos, kv_pos = random_case(0)
  kv_pos[1] = -1                      # row 1: an empty cache
  out, lse = dec.decode_attention(q, k, v, SPECS[0], q_pos=q_pos, kv_pos=kv_pos, num_splits=4,
                                  return_lse=True)
  assert np.all(np.asarray(out)[1] == 0) and np.all(np.isneginf(np.asarray(lse)[1]))
  assert np.all(np.isfinite(np.asarray(out)))


def test_decode_paged_equals_contiguous():
  q, k, v, q_pos, kv_pos = random_case(3, S=64)
  page = 16
  rng = np.random.default_rng(1)
  # Scatter each row's 4 logical pages to random pool pages (page 0 unused).
  table = rng.permutation(np.arange(1, 9)).reshape(2, 4).astype(np.int32)
  pool_k = np.zeros((9, 2, page, 8), np.float32)
  pool_v = np.zeros((9, 2, page, 8), np.float32)
  for b in range(2):
    for j in range(4):
      pool_k[table[b, j]] = k[b, :, j * page:(j + 1) * page]
      pool_v[table[b, j]] = v[b, :, j * page:(j + 1) * page]
  spec = SPECS[1]
  want = dec.decode_attention(q, k, v, spec, q_pos=q_pos, kv_pos=kv_pos, num_splits=2)
  got = dec.decode_attention(q, pool_k, pool_v, spec, q_pos=q_pos, kv_pos=kv_pos,
                             page_table=table, num_splits=2)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  got_c = dec.chunk_attention(q, pool_k, pool_v, spec, q_pos=q_pos, kv_pos=kv_pos,
                              page_table=table, block_k=16)
  np.testing.assert_allclose(np.asarray(got_c), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_chunk_attention_dynamic_limit_matches_reference(spec):
  q, k, v, _, _ = random_case(5, T=24, S=80)
  B = q.shape[0]
  kv_pos = np.broadcast_to(np.arange(80, dtype=np.int32), (B, 80)).copy()
  q_pos = np.broadcast_to(np.arange(48, 72, dtype=np.int32), (B, 24)).copy()

  @jax.jit
  def run(limit):
    pos = jnp.where(kv_pos < limit, kv_pos, -1)
    return dec.chunk_attention(q, k, v, spec, q_pos=q_pos, kv_pos=pos, kv_limit=limit,
                               block_k=16, return_lse=True)

  for limit in (0, 20, 48):           # one compiled program for every limit
    out, lse = run(jnp.int32(limit))
    pos = np.where(kv_pos < limit, kv_pos, -1)
    ref_out, ref_lse = dense(q, k, v, spec, q_pos, pos, 8 ** -0.5)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=2e-5)
    np.testing.assert_allclose(np.asarray(lse), ref_lse, atol=2e-5)


def test_cache_part_merged_with_self_part_is_the_whole_attention():
  """lse merge of (keys < 48) and (keys in [48, 72)) == attention over all keys."""
  spec = SPECS[1]
  q, k, v, _, _ = random_case(7, T=24, S=72)
  B = q.shape[0]
  pos = np.broadcast_to(np.arange(72, dtype=np.int32), (B, 72)).copy()
  q_pos = pos[:, 48:]
  part_a = dec.chunk_attention(q, k[:, :, :48], v[:, :, :48], spec, q_pos=q_pos,
                               kv_pos=pos[:, :48], block_k=16, return_lse=True)
  part_b = dec.chunk_attention(q, k[:, :, 48:], v[:, :, 48:], spec, q_pos=q_pos,
                               kv_pos=pos[:, 48:], block_k=16, return_lse=True)
  out, _ = merge_forward([part_a[0], part_b[0]], [part_a[1], part_b[1]])
  ref_out, _ = dense(q, k, v, spec, q_pos, pos, 8 ** -0.5)
  np.testing.assert_allclose(np.asarray(out), ref_out, atol=2e-5)


def test_bad_inputs_raise_one_line_errors():
  q, k, v, q_pos, kv_pos = random_case(0)
  with pytest.raises(ValueError, match="num_splits"):
    dec.decode_attention(q, k, v, SPECS[0], q_pos=q_pos, kv_pos=kv_pos, num_splits=5)
  with pytest.raises(ValueError, match="kv_pos"):
    dec.decode_attention(q, k, v, SPECS[0], q_pos=q_pos, kv_pos=kv_pos[:, :10])
  with pytest.raises(ValueError, match="multiple of kv heads"):
    dec.decode_attention(q[:, :, :3], k, v, SPECS[0], q_pos=q_pos, kv_pos=kv_pos)
  with pytest.raises(ValueError, match="impl"):
    dec.decode_attention(q, k, v, SPECS[0], q_pos=q_pos, kv_pos=kv_pos, impl="cuda")


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[2]], ids=lambda s: s.kind)
def test_pallas_split_k_kernel_interpret_matches_reference(spec):
  """The Pallas (Triton) variant in interpret mode: GQA group rows, 4 splits, an empty row."""
  q, k, v, q_pos, kv_pos = random_case(11, T=1, S=96)
  kv_pos[1] = -1
  out, lse = dec.decode_attention(q, k, v, spec, q_pos=q_pos, kv_pos=kv_pos, num_splits=4,
                                  impl="pallas_gpu", interpret=True, return_lse=True)
  ref_out, ref_lse = dense(q, k, v, spec, q_pos, kv_pos, 8 ** -0.5)
  np.testing.assert_allclose(np.asarray(out), ref_out, atol=2e-5)
  np.testing.assert_allclose(np.asarray(lse), ref_lse, atol=2e-5)
  with pytest.raises(ValueError, match="one query per row"):
    dec.decode_attention(*random_case(0, T=2)[:3], spec, q_pos=random_case(0, T=2)[3],
                         kv_pos=random_case(0, T=2)[4], impl="pallas_gpu", interpret=True)
