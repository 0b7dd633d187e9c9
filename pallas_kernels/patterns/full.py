"""``full``: causal attention; a query at ``i`` sees every key ``j <= i``."""

from __future__ import annotations

import numpy as np

from pallas_kernels.patterns.base import Component, Pattern


class Full(Pattern):
  name = "full"
  params = ()
  only_causal = True

  def visible(self, q, k, spec):
    return True

  def kv_budget(self, spec, seq_len):
    return seq_len

  def doc_pairs(self, spec, a, n):
    return n * (n + 1) // 2

  def components(self, spec, g):
    return [Component(np.zeros(g.n_q, np.int64), g.c_hi)]

  def full_tile(self, spec, g, q_lo, q_hi, k_lo, k_hi, it):
    return True

  def n_slots(self, spec, capacity):
    return int(capacity)

  def slot_of(self, spec, capacity, pos, xp=np):
    return pos

  def slot_candidates(self, spec, capacity, slot, hi, xp=np):
    return xp.broadcast_to(slot, (hi.shape[0], slot.shape[-1]))

  def still_needed(self, spec, kpos, nxt, xp=np):
    return kpos == kpos

  def halo_len(self, spec):
    raise ValueError(f"halo attention is for sparse specs, got {spec}")

  def halo_generic(self, spec, H):
    raise ValueError(f"halo attention is for sparse specs, got {spec}")


PATTERN = Full()
