"""Shape buckets: every jitted program is compiled once per bucket, not once per length.

* Prompt (prefill) length: the next power of two (at least ``min_len``) up to one chunk, then a
  multiple of the chunk (each further chunk reuses the same program).
* Cache capacity and the decode step's attended prefix of full layers (``kv_bucket``): a multiple
  of ``max(quantum, 2**floor(log2 n) / per_octave)``, i.e. ``per_octave`` sizes per doubling (at
  most ``1/per_octave`` of the read is padding), always a multiple of ``quantum`` (the page size
  and the largest block).
"""

from __future__ import annotations

import math
from typing import Sequence

from pallas_kernels.spec import AttentionSpec

from longgen_jax.infer.errors import InferError


def next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def round_up(n: int, m: int) -> int:
  return -(-int(n) // int(m)) * int(m)


def bucket_len(n: int, quantum: int, per_octave: int = 4) -> int:
  """``n`` rounded up to ``per_octave`` steps per power of two (multiples of ``quantum``)."""
  n = max(1, int(n))
  step = max(int(quantum), (1 << (n.bit_length() - 1)) // max(1, int(per_octave)))
  step = round_up(step, quantum)
  return round_up(n, step)


def prompt_bucket(n: int, chunk: int, min_len: int) -> int:
  """Padded prompt length: ``max(min_len, next_pow2(n))`` (capped at ``chunk``) up to one chunk,
  else ``n`` rounded up to whole chunks."""
  if n <= chunk:
    return min(chunk, max(int(min_len), next_pow2(n)))
  return round_up(n, chunk)


def chunk_multiple(specs: Sequence[AttentionSpec], page_size: int = 0) -> int:
  """What every later prefill chunk length must be a multiple of: each layer's block, its
  pattern's ``prefill_multiple`` (e.g. ``vert_stride * block`` for strided layers, so strided
  blocks keep their residue) and the page."""
  m = max(1, int(page_size))
  for s in specs:
    m = math.lcm(m, s.block, s.pattern.prefill_multiple(s))
  return m


def _min_chunk(specs: Sequence[AttentionSpec]) -> int:
  """The largest ``min_prefill_chunk`` of the layers (the sink of sink_window layers)."""
  return max([s.pattern.min_prefill_chunk(s) for s in specs], default=0)


def check_chunk(chunk: int, specs: Sequence[AttentionSpec], page_size: int = 0) -> None:
  """Raises InferError unless ``chunk`` can be a prefill chunk for these layers."""
  m = chunk_multiple(specs, page_size)
  if chunk < 1 or chunk % m:
    raise InferError(f"prefill_chunk {chunk} must be a positive multiple of {m} (the blocks, "
                     "vert_stride * block of strided layers and the page size)")
  sink = _min_chunk(specs)
  if chunk < sink:
    raise InferError(f"prefill_chunk {chunk} must be >= the largest sink ({sink})")


DEFAULT_CHUNK = 16384


def default_chunk(specs: Sequence[AttentionSpec], page_size: int = 0,
                  target: int = DEFAULT_CHUNK) -> int:
  """``target`` rounded up to a valid prefill chunk for these layers (``check_chunk``)."""
  sink = _min_chunk(specs)
  return round_up(max(target, sink), chunk_multiple(specs, page_size))
