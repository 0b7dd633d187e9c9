"""Where each position lives in a layer's KV cache: the slot layouts of the hybrid cache.

Pure index arithmetic (works on numpy and traced jax arrays alike), shared by the cache writes,
the tests and the size report. ``capacity`` is the number of positions a sequence may reach.

* ``full``         slot = position; ``capacity`` slots (or pages of a pool, see ``cache.py``).
* ``sink_window``  ``sink`` slots for positions ``< sink``, then a ring of ``window`` slots:
                   ``slot(p) = p`` if ``p < sink`` else ``sink + (p - sink) % window``.
                   ``min(sink + window, capacity)`` slots: the ring never wraps when the
                   capacity is smaller.
* ``strided``      compact: a *vertical* region with one ``block``-slot entry per block
                   ``kb % vert_stride == 0`` (``kb // vert_stride``-th entry), then a ring of
                   ``local_blocks`` blocks for the other blocks (entry ``kb % local_blocks``).
                   A ring slot may still hold an older, out-of-window block: the canonical
                   predicate masks it through the slot's stored position, so no eviction pass is
                   needed. ``(ceil(ceil(capacity / block) / vert_stride) + local_blocks) * block``
                   slots, i.e. ``spec.kv_budget(capacity)`` rounded to whole blocks.

``bulk_positions`` answers the inverse question for a prefill chunk: which position (if any) each
slot must take from the chunk ``[start, start + n)`` when positions ``>= limit[b]`` (right
padding) are not written.
"""

from __future__ import annotations

import numpy as np

from pallas_kernels.spec import AttentionSpec


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def n_vertical_blocks(spec: AttentionSpec, capacity: int) -> int:
  """Vertical (``kb % vert_stride == 0``) blocks among the blocks of ``capacity`` positions."""
  return _cdiv(_cdiv(capacity, spec.block), spec.vert_stride)


def n_slots(spec: AttentionSpec, capacity: int) -> int:
  """Slots of one sequence in a layer with this spec (see the module docstring)."""
  if spec.kind == "full":
    return int(capacity)
  if spec.kind == "sink_window":
    return int(min(spec.sink + spec.window, capacity))
  return int((n_vertical_blocks(spec, capacity) + spec.local_blocks) * spec.block)


def slot_of(spec: AttentionSpec, capacity: int, pos, xp=np):
  """Slot holding position ``pos`` (any int array; ``xp`` numpy or jax.numpy)."""
  if spec.kind == "full":
    return pos
  if spec.kind == "sink_window":
    return xp.where(pos < spec.sink, pos, spec.sink + xp.mod(pos - spec.sink, spec.window))
  b, vs, lb = spec.block, spec.vert_stride, spec.local_blocks
  kb = pos // b
  vertical = (kb // vs) * b + xp.mod(pos, b)
  ring = n_vertical_blocks(spec, capacity) * b + xp.mod(pos, lb * b)
  return xp.where(xp.mod(kb, vs) == 0, vertical, ring)


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
  lo = start
  if spec.kind == "full":
    cand = xp.broadcast_to(slot, (hi.shape[0], S))
  elif spec.kind == "sink_window":
    ring = slot - spec.sink
    cand_ring = hi - xp.mod(hi - spec.sink - ring, spec.window)
    cand = xp.where(slot < spec.sink, slot, xp.where(cand_ring >= spec.sink, cand_ring, -1))
  else:
    b, vs, lb = spec.block, spec.vert_stride, spec.local_blocks
    nv = n_vertical_blocks(spec, capacity) * b
    vert = (slot // b) * vs * b + xp.mod(slot, b)
    r = slot - nv
    cand_ring = hi - xp.mod(hi - r, lb * b)
    ring_ok = xp.mod(cand_ring // b, vs) != 0
    cand = xp.where(slot < nv, vert, xp.where(ring_ok, cand_ring, -1))
  ok = (cand >= lo) & (cand <= hi)
  return xp.where(ok, cand, -1)
