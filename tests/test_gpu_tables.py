"""``gpu_tables.segment_visits``: the per-batch visit lists of packed rows, against brute force.

For every (row block, entry block) tile: a tile holding a visible same-document pair is kept, a
tile kept as full (unmasked) holds only visible same-document pairs, and the lists hold each
static entry at most once. Both directions (forward rows are query blocks, backward rows are key
blocks), contiguous documents and arbitrary ids.
"""

import numpy as np
import pytest

from pallas_kernels.backends.gpu_tables import kernel_tables, segment_visits
from pallas_kernels.spec import AttentionSpec


def _docs(rng, t, contiguous):
  if not contiguous:
    return rng.integers(0, 3, t)
  cuts = np.sort(rng.choice(np.arange(1, t), int(rng.integers(1, 6)), replace=False))
  return np.repeat(np.arange(len(cuts) + 1), np.diff(np.r_[0, cuts, t]))


CASES = [(spec, contiguous, seed) for spec in ("full@16", "sink_window:16:48@16", "strided:2:3@16")
         for contiguous in (True, False) for seed in (0, 1)]


@pytest.mark.parametrize("spec,contiguous,seed", CASES)
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_segment_visits_cover_exactly_the_visible_tiles(spec, contiguous, seed, direction):
  spec = AttentionSpec.parse(spec)
  rng = np.random.default_rng(seed)
  t, bq, bk = 192, 32, 16
  seg = np.stack([_docs(rng, t, contiguous) for _ in range(2)]).astype(np.int32)
  kt = kernel_tables(spec, t, t, bq, bk)
  qi, ki = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
  if direction == "fwd":
    rows, row_block, entry_block = kt.fwd, bq, bk
  else:
    rows, row_block, entry_block = kt.bwd, bk, bq
  got = np.asarray(segment_visits(rows, seg, seg, row_block, entry_block))
  assert got.shape == (2,) + rows.shape and got.dtype == np.int32
  for b in range(2):
    vis = spec.allowed(qi, ki) & (seg[b][:, None] == seg[b][None, :])   # [query, key]
    if direction == "bwd":
      vis = vis.T                                                         # [key, query]
    for r in range(rows.shape[0]):
      n_full, n_tot = got[b, r, :2]
      kept = list(got[b, r, 2:2 + n_tot])
      static = set(rows[r, 2:2 + rows[r, 1]])
      assert len(set(kept)) == len(kept) and set(kept) <= static
      for j in static:
        tile = vis[r * row_block:(r + 1) * row_block, j * entry_block:(j + 1) * entry_block]
        if tile.any():
          assert j in kept, (b, r, j)
        if j in kept[:n_full]:
          assert tile.all(), (b, r, j)


def test_packed_documents_skip_cross_document_tiles():
  """Four documents in a 1024-token row: full attention visits about the same-document share of
  the causal tiles, not all of them."""
  spec = AttentionSpec.full(64)
  t = 1024
  seg = np.repeat(np.arange(4), 256)[None].astype(np.int32)
  kt = kernel_tables(spec, t, t, 64, 64)
  got = np.asarray(segment_visits(kt.fwd, seg, seg, 64, 64))
  assert kt.fwd[:, 1].sum() == 136                 # 16 * 17 / 2 causal tiles
  assert got[0, :, 1].sum() == 4 * 10               # 4 documents of 4 * 5 / 2 tiles
  assert (got[0, :, 0] == got[0, :, 1] - 1).all()   # only each diagonal tile is masked
