"""``strided:LOCAL:STRIDE``: the ``local_blocks`` most recent blocks plus every ``vert_stride``-th.

With ``qb = i // block`` and ``kb = j // block``, a query at ``i`` sees key ``j <= i`` iff
``qb - kb < local_blocks`` or ``kb % vert_stride == 0`` (blocks counted from absolute position 0,
so block 0 always acts as a sink; ``local_blocks`` includes the query's own block).
"""

from __future__ import annotations

import numpy as np

from pallas_kernels.patterns.base import Component, Pattern, SpecError


def _cdiv(a, b):
  return -(-a // b)


class Strided(Pattern):
  name = "strided"
  params = ("local_blocks", "vert_stride")

  def validate(self, spec):
    super().validate(spec)
    if spec.local_blocks < 1:
      raise SpecError(f"strided needs local_blocks >= 1, got {spec.local_blocks}")
    if spec.vert_stride < 1:
      raise SpecError(f"strided needs vert_stride >= 1, got {spec.vert_stride}")

  # ---------------------------------------------------------------- token level
  def visible(self, q, k, spec):
    qb = q // spec.block
    kb = k // spec.block
    return ((qb - kb) < spec.local_blocks) | ((kb % spec.vert_stride) == 0)

  def kv_budget(self, spec, seq_len):
    strided = _cdiv(_cdiv(seq_len, spec.block), spec.vert_stride)
    return min(seq_len, (spec.local_blocks + strided) * spec.block)

  def doc_pairs(self, spec, a, n):
    b, lb, vs = spec.block, spec.local_blocks, spec.vert_stride
    i = np.arange(a, a + n, dtype=np.int64)
    lo = np.maximum(0, i // b - lb + 1)                 # first local block of each query
    total = int(np.sum(i - np.maximum(a, lo * b) + 1))  # local blocks, clipped to the doc
    kb = np.arange(int(lo.max()) + 1, dtype=np.int64)
    per = np.where(kb % vs == 0, np.maximum(0, (kb + 1) * b - np.maximum(a, kb * b)), 0)
    below = np.concatenate([[0], np.cumsum(per)])        # strided tokens in blocks < lo
    return total + int(np.sum(below[lo]))

  # ---------------------------------------------------------------- block tables
  def components(self, spec, g):
    """A prefix of the (row independent) tiles touching a vertical block + the local range."""
    b, lb, vs = spec.block, spec.local_blocks, spec.vert_stride
    p0 = g.q_lo // b - lb + 1                         # first local pattern block of each row
    l_lo = np.minimum(g.first_reaching(p0 * b), g.c_hi)
    j = np.arange(g.n_kv, dtype=np.int64)
    k_lo = g.kv_off + j * g.bk
    k_hi = g.kv_off + np.minimum((j + 1) * g.bk, g.kv_len) - 1
    strided = j[(k_hi // b // vs) * vs >= k_lo // b]
    n_strided = np.searchsorted(strided, l_lo)       # those entirely before the local range
    return [Component(np.zeros(g.n_q, np.int64), n_strided, strided), Component(l_lo, g.c_hi)]

  def full_tile(self, spec, g, q_lo, q_hi, k_lo, k_hi, it):
    # pattern blocks [a, z] are seen by the tile's last query only through the stride
    b, lb, vs = spec.block, spec.local_blocks, spec.vert_stride
    a = k_lo // it(b)
    z = np.minimum(k_hi // it(b), q_hi // it(b) - it(lb))
    if vs > 1:
      return (a > z) | ((a == z) & (a % it(vs) == 0))
    return True

  # ---------------------------------------------------------------- KV cache
  # A vertical region with one ``block``-slot entry per vertical block (``kb // vert_stride``-th
  # entry), then a ring of ``local_blocks`` blocks for the other blocks (entry ``kb % local``).
  # A ring slot may still hold an older, out-of-window block: the predicate masks it through the
  # slot's stored position.
  def n_vertical_blocks(self, spec, capacity):
    return _cdiv(_cdiv(capacity, spec.block), spec.vert_stride)

  def n_slots(self, spec, capacity):
    return int((self.n_vertical_blocks(spec, capacity) + spec.local_blocks) * spec.block)

  def slot_of(self, spec, capacity, pos, xp=np):
    b, vs, lb = spec.block, spec.vert_stride, spec.local_blocks
    kb = pos // b
    vertical = (kb // vs) * b + xp.mod(pos, b)
    ring = self.n_vertical_blocks(spec, capacity) * b + xp.mod(pos, lb * b)
    return xp.where(xp.mod(kb, vs) == 0, vertical, ring)

  def slot_candidates(self, spec, capacity, slot, hi, xp=np):
    b, vs, lb = spec.block, spec.vert_stride, spec.local_blocks
    nv = self.n_vertical_blocks(spec, capacity) * b
    vert = (slot // b) * vs * b + xp.mod(slot, b)
    cand_ring = hi - xp.mod(hi - (slot - nv), lb * b)
    ring_ok = xp.mod(cand_ring // b, vs) != 0
    return xp.where(slot < nv, vert, xp.where(ring_ok, cand_ring, -1))

  def still_needed(self, spec, kpos, nxt, xp=np):
    kb = kpos // spec.block
    return (kb % spec.vert_stride == 0) | (kb > nxt // spec.block - spec.local_blocks)

  def prefill_multiple(self, spec):
    return spec.block * spec.vert_stride

  # ---------------------------------------------------------------- sequence parallelism
  def halo_len(self, spec):
    return (spec.local_blocks - 1) * spec.block

  def halo_check(self, spec, chunk_len):
    if chunk_len % (spec.block * spec.vert_stride):
      return (f"chunk length {chunk_len} must be a multiple of block * vert_stride = "
              f"{spec.block * spec.vert_stride}")
    return None

  def halo_generic(self, spec, H):
    kv_off = (-H) % (spec.block * spec.vert_stride)
    return spec, kv_off + H, kv_off

  def global_positions(self, spec, seq_len):
    p = np.arange(seq_len, dtype=np.int64)
    return p[(p // spec.block) % spec.vert_stride == 0]


PATTERN = Strided()
