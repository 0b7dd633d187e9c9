"""Block tables vs dense masks (spec.dense_mask) on a fixed, seeded list of small problems."""

import tracemalloc

import numpy as np
import pytest

from pallas_kernels.block_tables import block_tables
from pallas_kernels.spec import AttentionSpec, dense_mask

S = AttentionSpec


def _random_cases(n, seed):
  rng = np.random.default_rng(seed)
  cases = []
  for _ in range(n):
    b = int(rng.choice([16, 32]))
    kind = rng.choice(["full", "sink_window", "strided"])
    if kind == "full":
      spec = S.full(b)
    elif kind == "sink_window":
      spec = S.sink_window(int(rng.integers(0, 80)), b * int(rng.integers(1, 6)), b)
    else:
      spec = S.strided(int(rng.integers(1, 4)), int(rng.integers(1, 5)), b)
    q_len, kv_len = int(rng.integers(1, 160)), int(rng.integers(1, 160))
    bq, bk = (int(x) for x in rng.choice([8, 16, 32, 64], 2))
    q_off, kv_off = int(rng.integers(0, 120)), int(rng.integers(0, 120))
    if rng.random() < 0.3:          # chunked prefill: queries are the last chunk of the keys
      kv_off, q_off = 0, max(0, kv_len - q_len)
    cases.append((spec, q_len, kv_len, bq, bk, q_off, kv_off))
  return cases


EDGE_CASES = [
    (S.full(16), 64, 64, 16, 16, 0, 0),
    (S.full(16), 50, 70, 16, 32, 20, 0),
    (S.sink_window(40, 16, 16), 100, 100, 16, 16, 0, 0),      # sink >= window
    (S.sink_window(8, 256, 16), 90, 90, 16, 16, 0, 0),        # window >= sequence
    (S.sink_window(0, 32, 16), 100, 100, 32, 8, 0, 0),        # no sink
    (S.sink_window(5, 32, 16), 30, 40, 16, 16, 0, 100),       # keys all in the future: empty rows
    (S.sink_window(5, 32, 16), 40, 40, 16, 16, 300, 0),       # keys all out of the window
    (S.strided(1, 1, 16), 80, 80, 16, 16, 0, 0),              # vert_stride 1 == causal
    (S.strided(2, 3, 16), 130, 130, 8, 64, 0, 0),             # tiles smaller / larger than block
    (S.strided(3, 2, 32), 100, 60, 64, 8, 37, 11),            # unaligned offsets
    (S.strided(1, 4, 16), 70, 70, 64, 64, 0, 0),              # tile spans the stride
]
CASES = EDGE_CASES + _random_cases(250, seed=20241001)


def _dense_tiles(spec, q_len, kv_len, bq, bk, q_off, kv_off):
  """0 = no visible pair, 1 = some, 2 = every pair of the padded tile real and visible."""
  m = dense_mask(spec, q_len, kv_len, q_offset=q_off, kv_offset=kv_off)
  nq, nk = -(-q_len // bq), -(-kv_len // bk)
  padded = np.zeros((nq * bq, nk * bk), bool)
  padded[:q_len, :kv_len] = m
  t = padded.reshape(nq, bq, nk, bk)
  some, every = t.any((1, 3)), t.all((1, 3))
  return some.astype(np.int8) + (some & every)


def _listed_tiles(n_rows, n_cols, idx, cnt, partial):
  out = np.zeros((n_rows, n_cols), np.int8)
  for r in range(n_rows):
    row = idx[r, :cnt[r]]
    assert np.all(np.diff(row) > 0), f"row {r} not strictly ascending: {row}"
    if cnt[r]:
      assert np.all(idx[r, cnt[r]:] == row[-1]), f"row {r} padding does not repeat the last entry"
    else:
      assert np.all(idx[r] == 0)
    assert not partial[r, cnt[r]:].any(), f"row {r}: padding flagged partial"
    out[r, row] = 1 + (~partial[r, :cnt[r]])
  return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_tables_match_dense_mask(case):
  spec, q_len, kv_len, bq, bk, q_off, kv_off = CASES[case]
  bt = block_tables(spec, q_len, kv_len, block_q=bq, block_k=bk, q_offset=q_off,
                    kv_offset=kv_off)
  want = _dense_tiles(spec, q_len, kv_len, bq, bk, q_off, kv_off)
  nq, nk = want.shape
  assert (bt.n_q_blocks, bt.n_kv_blocks) == (nq, nk)
  assert bt.max_fwd >= 1 and bt.max_bwd >= 1
  assert bt.fwd_idx.shape == (nq, bt.max_fwd) and bt.bwd_idx.shape == (nk, bt.max_bwd)
  got = _listed_tiles(nq, nk, bt.fwd_idx, bt.fwd_cnt, bt.fwd_partial)
  # every visible pair lies in a listed tile, every listed tile has a visible pair, and the
  # partial flag is exact: non-partial tiles are entirely visible (and partial ones are not)
  np.testing.assert_array_equal(got, want, err_msg=str(CASES[case]))
  got_bwd = _listed_tiles(nk, nq, bt.bwd_idx, bt.bwd_cnt, bt.bwd_partial)
  np.testing.assert_array_equal(got_bwd, got.T, err_msg="bwd is not the transpose of fwd")
  # compact form agrees with the padded one
  assert bt.n_visited == int(bt.fwd_cnt.sum()) == int(bt.bwd_cnt.sum()) == len(bt.fwd_indices)
  assert bt.n_partial == int(bt.fwd_partial.sum()) == int(bt.bwd_partial.sum())


def test_defaults_cache_and_readonly():
  spec = S.sink_window(64, 256, 64)
  bt = block_tables(spec, 1000)
  assert (bt.block_q, bt.block_k, bt.kv_len) == (64, 64, 1000)
  assert block_tables(spec, 1000, 1000, block_q=64, block_k=64) is bt
  with pytest.raises(ValueError):
    bt.fwd_idx[0, 0] = 3
  with pytest.raises(ValueError):
    bt.fwd_indices[0] = 3


def test_window_rows_have_constant_width():
  """Steady-state sink+window rows visit ceil(sink/b) + window/b (+1 for the diagonal) tiles."""
  bt = block_tables(S.sink_window(64, 4096, 128), 32768)
  assert bt.max_fwd == 1 + 4096 // 128 + 1
  assert int(bt.fwd_cnt[-1]) == bt.max_fwd
  # sink tile is visited by every query tile: the transposed padded width is n_q
  assert int(bt.bwd_cnt[0]) == bt.n_q_blocks


def test_long_sequence_uses_memory_proportional_to_visited_tiles():
  """A 1M-token sink+window table must not allocate anything of size (L/b)^2 (= 64M entries)."""
  tracemalloc.start()   # offsets unused elsewhere: a fresh (uncached) build
  bt = block_tables(S.sink_window(64, 4096, 128), 1 << 20, q_offset=128, kv_offset=128)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert bt.n_visited < 300_000
  assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("kwargs, match", [
    (dict(q_len=0), "q_len"),
    (dict(q_len=10, kv_len=-1), "kv_len"),
    (dict(q_len=10, block_q=24), "block_q"),
    (dict(q_len=10, block_k=0), "block_k"),
    (dict(q_len=10, q_offset=-1), "q_offset"),
    (dict(q_len=10, kv_offset=1.5), "kv_offset"),
    (dict(q_len=2**31 - 10), "2\\*\\*31"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    block_tables(S.full(16), **kwargs)


@pytest.mark.parametrize("spec", ["full@32", "sink_window:40:64@32", "sink_window:0:96@32",
                                  "strided:2:3@32", "strided:1:2@16"])
@pytest.mark.parametrize("docs", [[300], [100, 57, 143], [10, 20, 270], [1, 299]])
def test_visible_pairs_packed_equals_dense(spec, docs):
  spec = AttentionSpec.parse(spec)
  seg = np.repeat(np.arange(len(docs)), docs)
  L = seg.size
  qi, ki = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
  dense = np.sum(spec.allowed(qi, ki) & (seg[:, None] == seg[None, :]))
  assert spec.visible_pairs_packed(docs) == dense
  assert spec.visible_pairs(L) == np.sum(spec.allowed(qi, ki))
