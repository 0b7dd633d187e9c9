"""The ``Pattern`` protocol: everything one attention pattern kind knows, in one place.

A pattern is a stateless object; every method takes the layer's ``AttentionSpec`` (``spec``), whose
fields (``block, sink, window, local_blocks, vert_stride``) are the pattern's parameters. The
consumers (spec parsing, block tables, the kernels, the KV cache, prefill chunking, halo sequence
parallelism, the Hugging Face export) ask the pattern; none of them branches on ``spec.kind``.
``registry.py`` maps kind names to patterns and raises on an unknown kind.

The token predicate ``visible(q, k, spec)`` is the pattern's part of ``spec.allowed`` (causality
and segment ids are added by the caller). It must use operators only (``< <= == - + // % | &``)
on non-negative integer positions, so NumPy, ``jnp`` (XLA, Pallas Triton, Mosaic GPU) and Mosaic
TPU (``truncating``, which maps ``//`` and ``%`` to ``lax.div`` / ``lax.rem``) all lower it
unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class SpecError(ValueError):
  """An invalid attention spec (one clear line)."""


FIELDS = ("block", "sink", "window", "local_blocks", "vert_stride")


@dataclasses.dataclass
class Component:
  """Per query tile ``i``: the KV tiles ``values[start[i]:stop[i]]`` (identity when None).

  ``start`` and ``stop`` are non-decreasing in ``i``; ``values`` is ascending.
  """
  start: np.ndarray
  stop: np.ndarray
  values: np.ndarray | None = None


class Pattern:
  """Base class of the pattern kinds (``full.py``, ``sink_window.py``, ``strided.py``, ...).

  Subclasses set ``name``, ``params`` (the spec fields their string form lists, in order) and
  implement every method that raises ``NotImplementedError`` here.
  """

  name: str = ""
  params: tuple[str, ...] = ()
  only_causal: bool = False   # True: the predicate is causality alone (block-table fast path)

  # ---------------------------------------------------------------- spec, text form
  def validate(self, spec) -> None:
    """Raises ``SpecError`` on invalid parameters; fields outside ``params`` must be 0."""
    unused = [f for f in FIELDS[1:] if f not in self.params and getattr(spec, f)]
    if unused:
      raise SpecError(f"a {self.name!r} spec takes no {'/'.join(unused)}: {spec!r}")

  def format(self, spec) -> str:
    """String form (``AttentionSpec.parse`` reads it back)."""
    args = "".join(f":{getattr(spec, p)}" for p in self.params)
    return f"{self.name}{args}@{spec.block}"

  # ---------------------------------------------------------------- token level
  def visible(self, q, k, spec):
    """The pattern part of the predicate (without causality); operators only."""
    raise NotImplementedError

  def kv_budget(self, spec, seq_len: int) -> int:
    """Max number of KV tokens any query of a ``seq_len`` row can see."""
    raise NotImplementedError

  def doc_pairs(self, spec, a: int, n: int) -> int:
    """Visible causal (query, key) pairs inside one document at row positions ``[a, a + n)``."""
    raise NotImplementedError

  # ---------------------------------------------------------------- block tables
  def components(self, spec, g) -> list[Component]:
    """Visible KV tiles per query tile as disjoint components in ascending tile order
    (``g``: the ``tiling.Geometry`` of the problem)."""
    raise NotImplementedError

  def full_tile(self, spec, g, q_lo, q_hi, k_lo, k_hi, it):
    """Per tile pair (causally full, in bounds): True where every pair is visible."""
    raise NotImplementedError

  # ---------------------------------------------------------------- KV cache
  def n_slots(self, spec, capacity: int) -> int:
    raise NotImplementedError

  def slot_of(self, spec, capacity: int, pos, xp=np):
    raise NotImplementedError

  def slot_candidates(self, spec, capacity: int, slot, hi, xp=np):
    """Per slot, the newest position ``<= hi`` stored there (-1 or below 0: none)."""
    raise NotImplementedError

  def still_needed(self, spec, kpos, nxt, xp=np):
    """Whether a key at ``kpos`` is visible to some query at position ``>= nxt``."""
    raise NotImplementedError

  def prefill_multiple(self, spec) -> int:
    """Later prefill chunks (and their shifts) must be multiples of this (translation
    invariance of the pattern for shifts by whole chunks)."""
    return spec.block

  def min_prefill_chunk(self, spec) -> int:
    return 0

  # ---------------------------------------------------------------- sequence parallelism
  def halo_len(self, spec) -> int:
    """Tokens before a chunk that its first query may see through the local pattern."""
    raise NotImplementedError

  def halo_check(self, spec, chunk_len: int) -> str | None:
    """Why halo attention cannot run this spec with chunks of ``chunk_len`` (None: it can)."""
    return None

  def halo_generic(self, spec, H: int):
    """``(spec, q_offset, kv_offset)`` of the call shared by every chunk whose local keys start
    at ``lo = c * C - H`` with ``not halo_special(spec, lo)`` (translation invariance)."""
    raise NotImplementedError

  def halo_special(self, spec, lo: int) -> bool:
    """Whether the chunk whose local keys start at ``lo`` needs its own static call."""
    return lo < 0

  def global_positions(self, spec, seq_len: int) -> np.ndarray:
    """Sorted positions every later query may see however far away (sinks, vertical blocks)."""
    return np.zeros(0, np.int64)
