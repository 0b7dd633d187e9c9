"""``sink_window:SINK:WINDOW``: the row's first ``sink`` tokens plus the last ``window`` ones.

A query at ``i`` sees key ``j <= i`` iff ``j < sink`` or ``i - j < window`` (the window counts the
query itself). ``window`` is a multiple of ``block``. The sinks are the first ``sink`` tokens of
the (packed) row.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pallas_kernels.patterns.base import Component, Pattern, SpecError


class SinkWindow(Pattern):
  name = "sink_window"
  params = ("sink", "window")

  def validate(self, spec):
    super().validate(spec)
    if spec.sink < 0:
      raise SpecError(f"sink must be >= 0, got {spec.sink}")
    if spec.window <= 0:
      raise SpecError(f"sink_window needs window > 0, got {spec.window}")
    if spec.window % spec.block:
      raise SpecError(f"window {spec.window} is not a multiple of the block {spec.block}")

  # ---------------------------------------------------------------- token level
  def visible(self, q, k, spec):
    return (k < spec.sink) | (q - k < spec.window)

  def kv_budget(self, spec, seq_len):
    return min(seq_len, spec.sink + spec.window)

  def doc_pairs(self, spec, a, n):
    i = np.arange(a, a + n, dtype=np.int64)
    win = np.minimum(i - a + 1, spec.window)
    sinks = np.maximum(0, np.minimum(spec.sink, i - win + 1) - a)
    return int(np.sum(win + sinks))

  # ---------------------------------------------------------------- block tables
  def components(self, spec, g):
    """The sink range (tiles starting before ``sink``) + the window range, never overlapping."""
    zero = np.zeros(g.n_q, np.int64)
    s_end = np.minimum(np.clip(-((g.kv_off - spec.sink) // g.bk), 0, g.n_kv), g.c_hi)
    w_lo = np.minimum(g.first_reaching(g.q_lo - spec.window + 1), g.c_hi)
    return [Component(zero, np.minimum(s_end, w_lo)), Component(w_lo, g.c_hi)]

  def full_tile(self, spec, g, q_lo, q_hi, k_lo, k_hi, it):
    # every key j is a sink (j < sink) or inside every query's window (j > q_hi - window)
    return np.maximum(it(spec.sink), k_lo) > np.minimum(q_hi - it(spec.window), k_hi)

  # ---------------------------------------------------------------- KV cache
  # ``sink`` slots for positions < sink, then a ring of ``window`` slots.
  def n_slots(self, spec, capacity):
    return int(min(spec.sink + spec.window, capacity))

  def slot_of(self, spec, capacity, pos, xp=np):
    return xp.where(pos < spec.sink, pos, spec.sink + xp.mod(pos - spec.sink, spec.window))

  def slot_candidates(self, spec, capacity, slot, hi, xp=np):
    ring = slot - spec.sink
    cand_ring = hi - xp.mod(hi - spec.sink - ring, spec.window)
    return xp.where(slot < spec.sink, slot, xp.where(cand_ring >= spec.sink, cand_ring, -1))

  def still_needed(self, spec, kpos, nxt, xp=np):
    return (kpos < spec.sink) | (kpos > nxt - spec.window)

  def min_prefill_chunk(self, spec):
    return spec.sink

  # ---------------------------------------------------------------- sequence parallelism
  def halo_len(self, spec):
    return spec.window

  def halo_check(self, spec, chunk_len):
    if spec.sink > chunk_len:
      return f"sink {spec.sink} exceeds the sequence chunk length {chunk_len}"
    return None

  def halo_generic(self, spec, H):
    # keys >= c*C - H >= sink: no sink among them, the window is translation invariant
    return dataclasses.replace(spec, sink=0), H, 0

  def halo_special(self, spec, lo):
    return lo < spec.sink

  def global_positions(self, spec, seq_len):
    return np.arange(min(spec.sink, seq_len), dtype=np.int64)


PATTERN = SinkWindow()
