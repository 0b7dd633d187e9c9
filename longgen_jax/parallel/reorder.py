"""Sequence layouts for sequence parallelism: which row positions each ``sequence`` shard holds.

The reordering is done ONCE, on the host batch, before it is sharded (``reorder_batch``); the
model then sees permuted ``inputs``/``targets``/``positions``/``segment_ids``/``loss_mask``
(the per-document RoPE ``positions`` travel with their tokens, so RoPE is unaffected). Sharding
the permuted row in ``n`` contiguous pieces gives shard ``i``:

* ``contiguous``: chunk ``i`` of ``n`` (no reordering; causal attention is unbalanced).
* ``zigzag`` (MaxText "dual chunk swap"): the row is cut in ``2n`` chunks and shard ``i`` holds
  chunks ``i`` and ``2n-1-i``, so every shard has the same causal work. Each shard-local
  sequence is two contiguous sub-chunks, so sparse layers can still call the kernels per
  sub-chunk with static offsets and exchange only a halo.
* ``striped`` (Transformer Engine): token ``t`` on shard ``t mod n``. Balanced for full
  attention; sparse (windowed) layers cannot use it (a window touches every shard).

The loss is a sum over tokens, so it does not care about the order; anything that needs the
original order (logits for evaluation) uses ``restore``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import numpy as np

LAYOUTS = ("zigzag", "striped", "contiguous")
# The batch's keys: the same tuple as ``longgen_jax.data.packing.BATCH_KEYS`` (the data path's
# definition; tests/test_parallel_mesh.py checks they agree). Not imported from there so that
# ``longgen_jax.parallel`` stays free of grain (``benchmarks/train_step.py`` needs no grain).
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


class LayoutError(ValueError):
  """A sequence length / shard count the layout cannot handle."""


@dataclasses.dataclass(frozen=True)
class SeqLayout:
  """How a row of ``seq_len`` tokens is spread over ``n`` sequence shards."""

  kind: str
  n: int
  seq_len: int

  def __post_init__(self):
    if self.kind not in LAYOUTS:
      raise LayoutError(f"sequence layout {self.kind!r} is not one of {LAYOUTS}")
    if self.n < 1:
      raise LayoutError(f"number of sequence shards must be >= 1, got {self.n}")
    parts = self.n * self.sub_chunks
    if self.seq_len % parts:
      raise LayoutError(
          f"sequence length {self.seq_len} is not divisible by {parts} ({self.kind} layout "
          f"over {self.n} sequence shards needs {self.sub_chunks} chunk(s) per shard)")

  @property
  def sub_chunks(self) -> int:
    """Contiguous chunks per shard (1, 2 for zigzag; striped counts as 1 strided piece)."""
    return 2 if self.kind == "zigzag" and self.n > 1 else 1

  @property
  def local_len(self) -> int:
    return self.seq_len // self.n

  @property
  def chunk_len(self) -> int:
    """Length of one contiguous chunk (zigzag: half a shard; striped: 1)."""
    return 1 if self.kind == "striped" and self.n > 1 else self.local_len // self.sub_chunks

  @property
  def is_identity(self) -> bool:
    return self.n == 1 or self.kind == "contiguous"

  def chunk_ids(self) -> np.ndarray:
    """``[n, sub_chunks]`` global chunk index of each shard's sub-chunks (not for striped)."""
    if self.kind == "striped" and self.n > 1:
      raise LayoutError("striped layout has no contiguous chunks")
    i = np.arange(self.n)
    if self.sub_chunks == 2:
      return np.stack([i, 2 * self.n - 1 - i], axis=1)
    return i[:, None]

  def chunk_owner(self, c: int) -> tuple[int, int]:
    """``(shard, sub_chunk)`` holding global chunk ``c``."""
    ids = self.chunk_ids()
    where = np.argwhere(ids == c)
    if not len(where):
      raise LayoutError(f"chunk {c} out of range for {self}")
    return int(where[0, 0]), int(where[0, 1])

  def permutation(self) -> np.ndarray:
    """``perm`` with ``permuted = row[perm]``; also the row position of each permuted token."""
    return _permutation(self.kind, self.n, self.seq_len)

  def inverse(self) -> np.ndarray:
    """``inv`` with ``row = permuted[inv]``."""
    return _inverse(self.kind, self.n, self.seq_len)


@functools.lru_cache(maxsize=64)
def _permutation(kind: str, n: int, seq_len: int) -> np.ndarray:
  t = np.arange(seq_len)
  if n == 1 or kind == "contiguous":
    perm = t
  elif kind == "striped":
    perm = t.reshape(seq_len // n, n).T.reshape(-1)
  else:
    chunks = t.reshape(2 * n, seq_len // (2 * n))
    order = np.stack([np.arange(n), 2 * n - 1 - np.arange(n)], axis=1).reshape(-1)
    perm = chunks[order].reshape(-1)
  perm.setflags(write=False)
  return perm


@functools.lru_cache(maxsize=64)
def _inverse(kind: str, n: int, seq_len: int) -> np.ndarray:
  inv = np.argsort(_permutation(kind, n, seq_len))
  inv.setflags(write=False)
  return inv


def _take(x, idx, axis):
  if isinstance(x, np.ndarray):
    return np.take(x, idx, axis=axis)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return jnp.take(x, jnp.asarray(idx), axis=axis)


def reorder(x, layout: SeqLayout, axis: int = 1):
  """Row order -> layout order along ``axis`` (numpy or jax arrays)."""
  if layout.is_identity:
    return x
  _check_len(x, layout, axis)
  return _take(x, layout.permutation(), axis)


def restore(x, layout: SeqLayout, axis: int = 1):
  """Layout order -> row order along ``axis`` (inverse of ``reorder``)."""
  if layout.is_identity:
    return x
  _check_len(x, layout, axis)
  return _take(x, layout.inverse(), axis)


def _check_len(x, layout, axis):
  if x.shape[axis] != layout.seq_len:
    raise LayoutError(f"array has length {x.shape[axis]} on axis {axis}, layout expects "
                      f"{layout.seq_len}")


def reorder_batch(batch: Mapping[str, Any], layout: SeqLayout,
                  keys: tuple[str, ...] = BATCH_KEYS) -> dict[str, Any]:
  """Reorders every ``[B, T]`` entry of a data batch named in ``keys`` (others pass through).

  ``positions`` are permuted like the tokens (their VALUES stay the per-document positions),
  which is exactly what RoPE needs.
  """
  out = dict(batch)
  for k in keys:
    if k in out and out[k] is not None:
      out[k] = reorder(out[k], layout, axis=1)
  return out


def restore_batch(batch: Mapping[str, Any], layout: SeqLayout,
                  keys: tuple[str, ...] = BATCH_KEYS) -> dict[str, Any]:
  """Inverse of ``reorder_batch``."""
  out = dict(batch)
  for k in keys:
    if k in out and out[k] is not None:
      out[k] = restore(out[k], layout, axis=1)
  return out
