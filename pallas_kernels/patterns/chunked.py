"""``chunked:CHUNK`` (experimental): causal attention inside fixed chunks of ``CHUNK`` tokens.

A query at ``i`` sees key ``j <= i`` iff both lie in the same chunk, ``i // chunk == j // chunk``
(chunks counted from absolute position 0; the "chunked attention" of Llama 4's local layers). The
chunk length is stored in the spec's ``window`` field and is a multiple of ``block``. A layer's KV
cache needs one chunk of slots, and a sequence-parallel shard whose chunk length is a multiple of
``CHUNK`` needs no halo at all.

This module is the worked example of docs/architecture.md "Adding a pattern": it and one line in
``registry.py`` (plus the torch mirror in ``longgen_jax/hf/``) are all a new pattern needs.
"""

from __future__ import annotations

import numpy as np

from pallas_kernels.patterns.base import Component, Pattern, SpecError


class Chunked(Pattern):
  name = "chunked"
  params = ("window",)

  def validate(self, spec):
    super().validate(spec)
    if spec.window <= 0:
      raise SpecError(f"chunked needs a chunk length > 0, got {spec.window}")
    if spec.window % spec.block:
      raise SpecError(f"chunk length {spec.window} is not a multiple of the block {spec.block}")

  # ---------------------------------------------------------------- token level
  def visible(self, q, k, spec):
    return (q // spec.window) == (k // spec.window)

  def kv_budget(self, spec, seq_len):
    return min(seq_len, spec.window)

  def doc_pairs(self, spec, a, n):
    i = np.arange(a, a + n, dtype=np.int64)
    return int(np.sum(i - np.maximum(a, (i // spec.window) * spec.window) + 1))

  # ---------------------------------------------------------------- block tables
  def components(self, spec, g):
    """One range: from the tile holding the start of the first query's chunk to the diagonal."""
    lo = np.minimum(g.first_reaching((g.q_lo // spec.window) * spec.window), g.c_hi)
    return [Component(lo, g.c_hi)]

  def full_tile(self, spec, g, q_lo, q_hi, k_lo, k_hi, it):
    return k_lo // it(spec.window) == q_hi // it(spec.window)

  # ---------------------------------------------------------------- KV cache: a ring of one chunk
  def n_slots(self, spec, capacity):
    return int(min(spec.window, capacity))

  def slot_of(self, spec, capacity, pos, xp=np):
    return xp.mod(pos, spec.window)

  def slot_candidates(self, spec, capacity, slot, hi, xp=np):
    return hi - xp.mod(hi - slot, spec.window)

  def still_needed(self, spec, kpos, nxt, xp=np):
    return kpos >= (nxt // spec.window) * spec.window

  def prefill_multiple(self, spec):
    return spec.window

  # ---------------------------------------------------------------- sequence parallelism
  def halo_len(self, spec):
    return 0

  def halo_check(self, spec, chunk_len):
    if chunk_len % spec.window:
      return f"sequence chunk length {chunk_len} must be a multiple of the chunk {spec.window}"
    return None

  def halo_generic(self, spec, H):
    return spec, 0, 0


PATTERN = Chunked()
