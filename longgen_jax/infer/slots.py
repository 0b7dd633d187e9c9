"""Where each position lives in a layer's KV cache: the slot layouts of the hybrid cache.

Pure index arithmetic (works on numpy and traced jax arrays alike), shared by the cache writes,
the tests and the size report. ``capacity`` is the number of positions a sequence may reach.
Each pattern owns its layout (``Pattern.n_slots / slot_of / slot_candidates`` in
``pallas_kernels/patterns/``), e.g.

* ``full``         slot = position; ``capacity`` slots (or pages of a pool, see ``cache.py``).
* ``sink_window``  ``sink`` slots for positions ``< sink``, then a ring of ``window`` slots.
* ``strided``      a vertical region (one block per ``kb % vert_stride == 0`` block), then a ring
                   of ``local_blocks`` blocks: ``spec.kv_budget(capacity)`` rounded to blocks.
* ``chunked``      a ring of one chunk.

A ring slot may still hold an older, out-of-pattern position: the canonical predicate masks it
through the slot's stored position, so no eviction pass is needed.

``bulk_positions`` answers the inverse question for a prefill chunk: which position (if any) each
slot must take from the chunk ``[start, start + n)`` when positions ``>= limit[b]`` (right
padding) are not written.
"""

from __future__ import annotations

import numpy as np

from pallas_kernels.spec import AttentionSpec


def n_slots(spec: AttentionSpec, capacity: int) -> int:
  """Slots of one sequence in a layer with this spec (see the module docstring)."""
  return spec.pattern.n_slots(spec, capacity)


def slot_of(spec: AttentionSpec, capacity: int, pos, xp=np):
  """Slot holding position ``pos`` (any int array; ``xp`` numpy or jax.numpy)."""
  return spec.pattern.slot_of(spec, capacity, pos, xp=xp)


def bulk_positions(spec: AttentionSpec, capacity: int, start, n: int, limit, xp=np):
  """``[B, n_slots]`` position each slot takes from positions ``[start, start + n)``, or -1.

  Args:
    start: first position of the chunk (scalar, may be traced).
    n: chunk length (static).
    limit: ``[B]`` per-row end: positions ``>= limit[b]`` are padding and are not written.
  For each slot, the newest position of the chunk that maps to it (older ones would be
  overwritten anyway), so writing a chunk at once equals writing its tokens one by one.
  """
  S = n_slots(spec, capacity)
  slot = xp.arange(S)[None, :]
  hi = xp.minimum(start + n, limit)[:, None] - 1          # last written position per row
  cand = spec.pattern.slot_candidates(spec, capacity, slot, hi, xp=xp)
  ok = (cand >= start) & (cand <= hi)
  return xp.where(ok, cand, -1)
