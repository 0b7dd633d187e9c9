"""Analytic block tables: which KV tiles each query tile visits (and the transpose).

``block_tables(spec, q_len, kv_len, ...)`` derives, per query tile, the KV tiles holding at least
one visible (query, key) pair under ``spec.allowed`` (causal + pattern; segment ids are dynamic and
applied inside the kernels) directly from the pattern parameters. Each query tile's list is a
union of a few *components* whose bounds are non-decreasing in the query tile, given by the
pattern (``Pattern.components``, e.g. ``full``: the causal range ``[0, c_hi)``; ``sink_window``:
the sink range + the window range; ``strided``: a prefix of the row-independent list of tiles
touching a vertical block + the local range), and a per-pair full-tile test
(``Pattern.full_tile``).

The forward lists expand those ranges; the transposed (per KV tile, for dK/dV) lists come from the
same components via ``searchsorted`` on their monotone bounds, so no sort of the pairs is needed.
Everything is vectorised numpy: time and memory proportional to the visited tile pairs, never to
``L x L`` or ``(L / b) ** 2`` (except the padded ``[rows, max_width]`` views, built on first use).

Tiles index the *local* arrays: query tile ``i`` holds rows ``[i * block_q, (i + 1) * block_q)``
of ``q`` (absolute positions ``q_offset + row``), KV tile ``j`` likewise with ``kv_offset``. A tile
is *partial* when not every pair of its padded ``block_q x block_k`` area is a real, visible pair
(diagonal, window/sink/stride edges, ragged tail): kernels apply the token mask there only.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from pallas_kernels._common import cdiv, expand_ranges, is_pow2
from pallas_kernels.patterns import Component
from pallas_kernels.spec import AttentionSpec, as_spec


@dataclasses.dataclass(frozen=True, eq=False)
class BlockTables:
  """Forward (per query tile) and backward (per KV tile) visit lists; all arrays are read-only.

  Compact (CSR) form, always present: ``fwd_indices[fwd_indptr[i]:fwd_indptr[i + 1]]`` are the KV
  tiles query tile ``i`` visits, ascending, with ``fwd_indices_partial`` True where the token mask
  is needed; ``bwd_*`` is the exact transpose (query tiles per KV tile, ascending).

  Padded form of docs/architecture.md section 3 (properties, built once on first access):
  ``fwd_idx [n_q_blocks, max_fwd]`` repeats each row's last valid entry (0 for an empty row) so a
  pipelined kernel issues no new DMA on padding; ``fwd_cnt``; ``fwd_partial`` (False on padding);
  and ``bwd_idx / bwd_cnt / bwd_partial``. ``max_fwd`` and ``max_bwd`` are at least 1.
  """

  spec: AttentionSpec
  q_len: int
  kv_len: int
  block_q: int
  block_k: int
  n_q_blocks: int
  n_kv_blocks: int
  q_offset: int
  kv_offset: int
  fwd_indptr: np.ndarray
  fwd_indices: np.ndarray
  fwd_indices_partial: np.ndarray
  bwd_indptr: np.ndarray
  bwd_indices: np.ndarray
  bwd_indices_partial: np.ndarray

  @property
  def fwd_cnt(self) -> np.ndarray:
    return _readonly(np.diff(self.fwd_indptr).astype(np.int32))

  @property
  def bwd_cnt(self) -> np.ndarray:
    return _readonly(np.diff(self.bwd_indptr).astype(np.int32))

  @functools.cached_property
  def _fwd_padded(self):
    return _pad(self.fwd_indptr, self.fwd_indices, self.fwd_indices_partial)

  @functools.cached_property
  def _bwd_padded(self):
    return _pad(self.bwd_indptr, self.bwd_indices, self.bwd_indices_partial)

  @property
  def fwd_idx(self) -> np.ndarray:
    return self._fwd_padded[0]

  @property
  def fwd_partial(self) -> np.ndarray:
    return self._fwd_padded[1]

  @property
  def bwd_idx(self) -> np.ndarray:
    return self._bwd_padded[0]

  @property
  def bwd_partial(self) -> np.ndarray:
    return self._bwd_padded[1]

  @property
  def max_fwd(self) -> int:
    return max(int(np.diff(self.fwd_indptr).max(initial=0)), 1)

  @property
  def max_bwd(self) -> int:
    return max(int(np.diff(self.bwd_indptr).max(initial=0)), 1)

  @property
  def n_visited(self) -> int:
    """Number of visited (query tile, KV tile) pairs."""
    return int(self.fwd_indices.size)

  @property
  def n_partial(self) -> int:
    return int(self.fwd_indices_partial.sum())


def block_tables(spec, q_len: int, kv_len: int | None = None, *, block_q: int | None = None,
                 block_k: int | None = None, q_offset: int = 0, kv_offset: int = 0) -> BlockTables:
  """Builds (or returns the cached) block tables; see the module docstring.

  Args:
    spec: an ``AttentionSpec`` (or anything ``as_spec`` accepts).
    q_len, kv_len: local query / key lengths (``kv_len`` defaults to ``q_len``).
    block_q, block_k: tile sizes (powers of two; default ``spec.block``).
    q_offset, kv_offset: absolute position of the first query / key (>= 0).
  """
  spec = as_spec(spec)
  kv_len = q_len if kv_len is None else kv_len
  block_q = spec.block if block_q is None else block_q
  block_k = spec.block if block_k is None else block_k
  for name, val in (("q_len", q_len), ("kv_len", kv_len)):
    if not isinstance(val, (int, np.integer)) or val < 1:
      raise ValueError(f"{name} must be a positive int, got {val!r}")
  for name, val in (("q_offset", q_offset), ("kv_offset", kv_offset)):
    if not isinstance(val, (int, np.integer)) or val < 0:
      raise ValueError(f"{name} must be a non-negative int, got {val!r}")
  for name, val in (("block_q", block_q), ("block_k", block_k)):
    if not is_pow2(val):
      raise ValueError(f"{name} must be a power of two, got {val!r}")
  if max(q_offset + q_len, kv_offset + kv_len) + 2 * max(block_q, block_k, spec.block) >= 2**31:
    raise ValueError("positions must stay below 2**31")
  return _build(spec, int(q_len), int(kv_len), int(block_q), int(block_k), int(q_offset),
                int(kv_offset))


@functools.lru_cache(maxsize=32)
def _build(spec: AttentionSpec, q_len: int, kv_len: int, bq: int, bk: int, q_off: int,
           kv_off: int) -> BlockTables:
  g = _Geometry(spec, q_len, kv_len, bq, bk, q_off, kv_off)
  comps = spec.pattern.components(spec, g)
  fwd_cnt, cols = _expand_fwd(comps, g.n_q, g.n_kv)
  bwd_cnt, brows = _expand_bwd(comps, g.n_q, g.n_kv)
  if spec.pattern.only_causal:   # fast path: fully visible tiles are thresholds per row / per column
    fwd_partial = cols >= np.repeat(g.full_below.astype(np.int32), fwd_cnt)
    bwd_partial = brows < np.repeat(g.full_from.astype(np.int32), bwd_cnt)
    if g.n_q_full < g.n_q:
      bwd_partial |= brows >= g.n_q_full
  else:
    rows = np.repeat(np.arange(g.n_q, dtype=np.int32), fwd_cnt)
    fwd_partial = ~_full_tile(g, rows, cols)
    bcols = np.repeat(np.arange(g.n_kv, dtype=np.int32), bwd_cnt)
    bwd_partial = ~_full_tile(g, brows, bcols)
  fwd_ptr, bwd_ptr = _indptr(fwd_cnt), _indptr(bwd_cnt)
  arrays = [_readonly(a) for a in (fwd_ptr, cols, fwd_partial, bwd_ptr, brows, bwd_partial)]
  return BlockTables(spec, q_len, kv_len, bq, bk, g.n_q, g.n_kv, q_off, kv_off, *arrays)


class _Geometry:
  """Per-query-tile position bounds (int64 vectors of length ``n_q``) of one problem."""

  def __init__(self, spec, q_len, kv_len, bq, bk, q_off, kv_off):
    self.spec, self.bq, self.bk, self.q_off, self.kv_off = spec, bq, bk, q_off, kv_off
    self.kv_len = kv_len
    self.n_q, self.n_kv = cdiv(q_len, bq), cdiv(kv_len, bk)
    self.n_q_full, self.n_kv_full = q_len // bq, kv_len // bk    # tiles without padding
    qi = np.arange(self.n_q, dtype=np.int64)
    self.q_lo = q_off + qi * bq                                   # first query position
    self.q_hi = q_off + np.minimum((qi + 1) * bq, q_len) - 1      # last real query position
    self.k_last = kv_off + kv_len - 1                             # last real key position
    # causal: KV tiles starting at or before the tile's last query
    self.c_hi = np.clip((self.q_hi - kv_off) // bk + 1, 0, self.n_kv)
    # causal and in bounds: KV tiles [0, full_below[i]) of query tile i are fully visible ...
    f_hi = np.clip((self.q_lo - kv_off + 1) // bk, 0, self.n_kv_full)
    self.full_below = np.where(qi < self.n_q_full, f_hi, 0)
    # ... and, transposed, query tiles [full_from[j], n_q_full) of KV tile j
    kj = np.arange(self.n_kv, dtype=np.int64)
    f_lo = np.clip(-((q_off - (kv_off + (kj + 1) * bk - 1)) // bq), 0, self.n_q_full)
    self.full_from = np.where(kj < self.n_kv_full, f_lo, self.n_q_full)

  def first_reaching(self, pos):
    """Per row: first KV tile whose last real key is >= ``pos`` (``n_kv`` if none)."""
    lo = np.clip(-((self.kv_off - pos - 1) // self.bk) - 1, 0, self.n_kv)
    return np.where(self.k_last >= pos, lo, self.n_kv)


def _expand_fwd(comps: list[Component], n_q: int, n_kv: int):
  """Per query tile counts and the concatenated (row-major) KV tile lists of the components."""
  if all(c.values is None for c in comps):
    starts = [c.start for c in comps]
    stops = [c.stop for c in comps]
    lookup = None
  else:  # index one concatenated lookup table so a single expansion covers every component
    maps = [np.arange(n_kv, dtype=np.int32) if c.values is None else c.values.astype(np.int32)
            for c in comps]
    offs = np.cumsum([0] + [len(m) for m in maps[:-1]])
    starts = [c.start + o for c, o in zip(comps, offs)]
    stops = [c.stop + o for c, o in zip(comps, offs)]
    lookup = np.concatenate(maps)
  start, stop = np.stack(starts, 1), np.stack(stops, 1)
  vals = expand_ranges(start.ravel(), stop.ravel())
  return np.maximum(stop - start, 0).sum(1), (vals if lookup is None else lookup[vals])


def _expand_bwd(comps: list[Component], n_q: int, n_kv: int):
  """Per KV tile counts and query tile lists: each component transposes to one row range."""
  cols = np.arange(n_kv, dtype=np.int64)
  los, his = [], []
  for c in comps:
    if c.values is None:
      pos, present = cols, np.ones(n_kv, bool)
    else:
      pos = np.searchsorted(c.values, cols)
      padded = np.append(c.values, -1)          # pos == len(values) reads the -1 sentinel
      present = padded[pos] == cols
    # rows i with start[i] <= pos < stop[i]: both bounds are non-decreasing in i
    lo = np.searchsorted(c.stop, pos, side="right")
    hi = np.where(present, np.searchsorted(c.start, pos, side="right"), lo)
    los.append(lo)
    his.append(hi)
  lo, hi = np.stack(los, 1), np.stack(his, 1)
  order = np.argsort(np.where(hi > lo, lo, n_q), axis=1, kind="stable")   # disjoint: sort by start
  lo, hi = np.take_along_axis(lo, order, 1), np.take_along_axis(hi, order, 1)
  return np.maximum(hi - lo, 0).sum(1), expand_ranges(lo.ravel(), hi.ravel())


def _full_tile(g: _Geometry, rows, cols):
  """True where every pair of the padded tile is real and visible (vectorised over pairs)."""
  top = max(g.q_lo[-1], g.k_last) + 4 * max(g.bq, g.bk, g.spec.block)
  it = np.int32 if top < 2**31 else np.int64
  rows, cols = rows.astype(it, copy=False), cols.astype(it, copy=False)
  q_lo = rows * it(g.bq) + it(g.q_off)
  k_lo = cols * it(g.bk) + it(g.kv_off)
  k_hi = k_lo + it(g.bk - 1)
  full = (k_hi <= q_lo) & (rows < g.n_q_full) & (cols < g.n_kv_full)
  return full & g.spec.pattern.full_tile(g.spec, g, q_lo, q_lo + it(g.bq - 1), k_lo, k_hi, it)


def _indptr(counts):
  ptr = np.zeros(len(counts) + 1, np.int64)
  np.cumsum(counts, out=ptr[1:])
  return ptr


def _pad(indptr, indices, partial):
  """CSR lists -> padded ``[rows, width]`` tables (last valid entry repeated, 0 when empty)."""
  cnt = np.diff(indptr)
  n, width = len(cnt), max(int(cnt.max(initial=0)), 1)
  if indices.size == 0:
    return _readonly(np.zeros((n, width), np.int32)), _readonly(np.zeros((n, width), bool))
  it = np.int32 if indices.size < 2**31 else np.int64
  col = np.arange(width, dtype=it)[None, :]
  pos = np.minimum(col, np.maximum(cnt - 1, 0).astype(it)[:, None])
  pos += np.minimum(indptr[:-1], indices.size - 1).astype(it)[:, None]
  idx = indices[pos]
  flags = partial[pos]
  flags &= col < cnt.astype(it)[:, None]
  empty = cnt == 0
  if empty.any():
    idx[empty] = 0
  return _readonly(idx), _readonly(flags)


def _readonly(a: np.ndarray) -> np.ndarray:
  a.setflags(write=False)
  return a
