"""Hybrid KV cache: slot layouts, bulk vs token writes, bounds, sizes, sharding specs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pallas_kernels.spec import AttentionSpec
from longgen_jax.infer import buckets, slots
from longgen_jax.infer.cache import (analytic_kv_bytes, init_cache, partition_specs, write_chunk,
                                     write_token)
from longgen_jax.infer.errors import InferError
from longgen_jax.infer.paged import PageAllocator

SW = AttentionSpec.sink_window(4, 32, 16)
ST = AttentionSpec.strided(2, 3, 16)
CAP = 320


@pytest.mark.parametrize("spec", [SW, ST], ids=["sink_window", "strided"])
def test_every_visible_key_has_its_own_slot(spec):
  """For every query position, the keys it may see map to distinct slots within the bound."""
  n = slots.n_slots(spec, CAP)
  for q in range(CAP):
    keys = np.array([j for j in range(q + 1) if spec.allowed(q, j)])
    s = slots.slot_of(spec, CAP, keys)
    assert s.max() < n and len(set(s.tolist())) == len(keys), q
  want = spec.kv_budget(CAP) if spec.kind == "sink_window" else (
      -(-spec.kv_budget(CAP) // spec.block) * spec.block)
  assert n == want


def _random_kv(seed, B, T, H=2, D=4):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32),
          jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32))


@pytest.mark.parametrize("spec", [SW, ST, AttentionSpec.full(16)],
                         ids=["sink_window", "strided", "full"])
def test_chunk_writes_equal_token_by_token_writes(spec):
  """Writing right-padded chunks (rows of lengths 150 and 77) == writing each real token."""
  B, T, chunk = 2, 192, 64
  limit = np.array([150, 77])
  k, v = _random_kv(0, B, T)
  bulk = init_cache([spec], batch=B, capacity=CAP, n_kv_heads=2, head_dim=4,
                    dtype=jnp.float32).layers[0]
  for s in range(0, T, chunk):
    bulk = write_chunk(bulk, k[:, s:s + chunk], v[:, s:s + chunk], jnp.int32(s),
                       jnp.asarray(limit))
  tok = init_cache([spec], batch=B, capacity=CAP, n_kv_heads=2, head_dim=4,
                   dtype=jnp.float32).layers[0]
  step = jax.jit(lambda lc, kk, vv, p: write_token(lc, kk, vv, p))
  for t in range(int(limit.max())):
    pos = np.minimum(t, limit - 1)          # a finished row rewrites its last token
    idx = jnp.asarray(pos)[:, None, None, None]
    tok = step(tok, jnp.take_along_axis(k, idx, 1), jnp.take_along_axis(v, idx, 1),
               jnp.asarray(pos, jnp.int32))
  if spec.is_full:   # padding lands in full caches too; compare the real positions
    for b in range(B):
      n = limit[b]
      np.testing.assert_array_equal(np.asarray(bulk.k)[b, :, :n], np.asarray(tok.k)[b, :, :n])
    return
  # Same visible content for the last query (a superset of what any later query still needs;
  # other slots may hold stale, masked entries).
  for b in range(B):
    q = limit[b] - 1
    held = []
    for lc in (bulk, tok):
      pos = np.asarray(lc.pos)[b]
      live = (pos >= 0) & spec.allowed(q, pos)
      held.append({int(p): (np.asarray(lc.k)[b, :, i].tolist(), np.asarray(lc.v)[b, :, i].tolist())
                   for i, p in enumerate(pos) if live[i]})
    assert held[0] == held[1]
    assert set(held[0]) == {j for j in range(q + 1) if spec.allowed(q, j)}


def test_sparse_buffers_stay_at_their_bound_for_10x_the_window():
  """Token writes for 10x the window: sink_window keeps sink + window slots, strided its
  budget; both hold exactly what the last query can see."""
  B, steps = 1, 10 * SW.window
  cap = steps + 16
  cache = init_cache([SW, ST], batch=B, capacity=cap, n_kv_heads=1, head_dim=2,
                     dtype=jnp.float32)
  shapes = [lc.k.shape for lc in cache.layers]
  step = jax.jit(lambda lc, p: write_token(lc, jnp.ones((B, 1, 1, 2)), jnp.ones((B, 1, 1, 2)),
                                           p))
  layers = list(cache.layers)
  for t in range(steps):
    layers = [step(lc, jnp.full((B,), t, jnp.int32)) for lc in layers]
    if t % SW.window == 0 or t == steps - 1:
      for lc, shape in zip(layers, shapes):
        assert lc.k.shape == shape
        held = set(np.asarray(lc.pos)[0][np.asarray(lc.pos)[0] >= 0].tolist())
        needed = {j for j in range(t + 1) if lc.spec.allowed(t, j)}
        assert needed <= held, (lc.spec, t)
        assert len(held) <= lc.spec.kv_budget(t + 1) + lc.spec.block, (lc.spec, t)
  assert shapes[0][2] == SW.sink + SW.window
  assert shapes[1][2] == -(-ST.kv_budget(cap) // ST.block) * ST.block


def test_kv_sizes_and_saving():
  specs = [SW, AttentionSpec.full(16), SW]
  cache = init_cache(specs, batch=2, capacity=1024, n_kv_heads=2, head_dim=8,
                     dtype=jnp.bfloat16)
  kv = sum(lc.k.nbytes + lc.v.nbytes for lc in cache.layers)
  assert kv == analytic_kv_bytes(specs, 1024, 2, 2, 8, jnp.bfloat16)
  full = 3 * 2 * 1024 * 2 * 2 * 8 * 2
  assert 1 - kv / full == pytest.approx(2 / 3 * (1 - 36 / 1024))


def test_partition_specs_shard_rows_and_kv_heads():
  cache = init_cache([SW, AttentionSpec.full(16)], batch=2, capacity=64, n_kv_heads=2,
                     head_dim=4, paged=True, page_size=16)
  specs = partition_specs(cache)
  assert specs.layers[0].k == P(("data", "fsdp"), "tensor", None, None)
  assert specs.layers[0].pos == P(("data", "fsdp"), None)
  assert specs.layers[1].k == P(None, "tensor", None, None)       # the shared page pool
  assert specs.page_table == P(("data", "fsdp"), None)
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"))
  shardings = jax.tree.map(lambda p: jax.sharding.NamedSharding(mesh, p), specs,
                           is_leaf=lambda x: isinstance(x, P))
  placed = jax.device_put(cache, shardings)               # the spec tree matches the cache
  assert placed.layers[0].k.sharding.spec == specs.layers[0].k


def test_page_allocator_on_demand_and_exhaustion():
  alloc = PageAllocator(num_pages=4, page_size=16)
  table = np.zeros((2, 4), np.int32)
  assert alloc.ensure(table, np.array([20, 1]))            # 2 pages + 1 page
  assert sorted(table[table > 0].tolist()) == [1, 2, 3] and alloc.free_pages == 0
  assert not alloc.ensure(table, np.array([32, 16]))
  with pytest.raises(InferError, match="exhausted"):
    alloc.ensure(table, np.array([33, 1]))
  alloc.release(table, 1)
  assert alloc.free_pages == 1 and table[1].sum() == 0


def test_buckets():
  assert buckets.bucket_len(100, 128) == 128
  assert buckets.bucket_len(70_000, 128, 4) == 81_920          # 16K steps above 64K
  assert buckets.prompt_bucket(37, 64, 16) == 64
  assert buckets.prompt_bucket(130, 64, 16) == 192
  assert buckets.chunk_multiple([SW, ST], 32) == 96
  with pytest.raises(InferError, match="multiple of 48"):
    buckets.check_chunk(64, [ST])
  with pytest.raises(InferError, match="sink"):
    buckets.check_chunk(16, [AttentionSpec.sink_window(64, 128, 16)])


def test_default_chunk_is_valid_for_any_layout():
  odd = AttentionSpec.strided(2, 3, 128)       # vert_stride * block = 384 does not divide 16384
  assert buckets.default_chunk([odd]) == 16512
  buckets.check_chunk(buckets.default_chunk([odd, SW], 256), [odd, SW], 256)
