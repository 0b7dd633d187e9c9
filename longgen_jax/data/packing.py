"""Packing documents into fixed rows, and turning rows into training examples.

A packed row holds `seq_len + 1` tokens; the training example is
`inputs = row[:-1]`, `targets = row[1:]` (all arrays `[seq_len]`, int32):

* `segment_ids`: 1..n for the documents (pieces) in the row, 0 for padding.
* `positions`: restart at 0 at the start of every segment (RoPE positions).
* `loss_mask` (float32): 1 where the target is the next token *of the same
  segment*, else 0. So it is 0 on padding and on the last token of each
  segment (usually EOS), whose next token belongs to the next document.
  There `targets` is also set to the pad id: targets never cross a segment.

Packing strategies (grain transforms):

* "first_fit" (`grain.experimental.FirstFitPackIterDataset`): documents are
  placed whole into the first bin with room, padding the rest. Grain raises on
  a document longer than a row, so documents are first cut (`ChunkDocuments`)
  into pieces of at most `seq_len + 1` tokens with stride `seq_len`: piece k+1
  starts with the last token of piece k, so every token is a target exactly
  once and nothing is dropped. Each piece is its own segment (positions
  restart), as documents longer than the row are in any packing.
* "concat_then_split" (`grain.experimental.ConcatThenSplitIterDataset`): the
  document stream is concatenated and cut every `seq_len + 1` tokens (no
  padding except at the very end); a document cut at a row end continues as a
  new segment at position 0 of the next row. The token at each cut is an input
  of one row but the target of none (1 in `seq_len + 1` targets is lost).

`mask_documents=False` (Fu et al.: "regardless of document boundaries") turns
every row into ONE segment with positions 0..k-1: attention and targets run
across documents (separated by BOS/EOS); only padding is masked.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

TOKENS = "tokens"
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


class ChunkDocuments(grain.experimental.FlatMapTransform):
  """Cuts a token array into pieces of <= `seq_len + 1` tokens, stride `seq_len`."""

  def __init__(self, seq_len: int):
    self.seq_len = int(seq_len)
    # Only used by grain's MapDataset flat-map; the IterDataset one is unbounded.
    self.max_fan_out = 1 << 20

  def flat_map(self, element: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    tokens = element[TOKENS]
    n, step = len(tokens), self.seq_len
    if n <= step + 1:
      return [{TOKENS: tokens}]
    return [{TOKENS: tokens[s:s + step + 1]} for s in range(0, n - 1, step)]


def pack(ds: grain.IterDataset, *, seq_len: int, packing: str, num_bins: int, seed: int,
         shuffle_bins: bool) -> grain.IterDataset:
  """Packs `{"tokens": int32[n]}` elements into rows of `seq_len + 1` tokens.

  Returns elements with `tokens`, `tokens_segment_ids`, `tokens_positions`.
  """
  row = seq_len + 1
  if packing == "first_fit":
    ds = grain.experimental.FlatMapIterDataset(ds, ChunkDocuments(seq_len))
    return grain.experimental.FirstFitPackIterDataset(
        ds, length_struct={TOKENS: row}, num_packing_bins=num_bins, seed=seed, shuffle_bins=shuffle_bins)
  if packing == "concat_then_split":
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={TOKENS: row})
  raise ValueError(f"unknown packing {packing!r} (expected 'first_fit' or 'concat_then_split')")


class FormatRow(grain.transforms.Map):
  """Packed row (`seq_len + 1` tokens) -> training example (`seq_len` each)."""

  def __init__(self, *, mask_documents: bool, pad_id: int):
    self.mask_documents = mask_documents
    self.pad_id = int(pad_id)

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    tokens = np.asarray(element[TOKENS], dtype=np.int32)
    seg = np.asarray(element[f"{TOKENS}_segment_ids"], dtype=np.int32)
    pos = np.asarray(element[f"{TOKENS}_positions"], dtype=np.int32)
    if not self.mask_documents:
      real = seg > 0
      seg = real.astype(np.int32)
      pos = np.where(real, np.cumsum(real, dtype=np.int32) - 1, 0).astype(np.int32)
    seg_in, seg_tgt = seg[:-1], seg[1:]
    real_in = seg_in > 0
    valid = real_in & (seg_tgt == seg_in)
    return {
        "inputs": np.where(real_in, tokens[:-1], self.pad_id).astype(np.int32),
        "targets": np.where(valid, tokens[1:], self.pad_id).astype(np.int32),
        "positions": np.where(real_in, pos[:-1], 0).astype(np.int32),
        "segment_ids": seg_in.copy(),
        "loss_mask": valid.astype(np.float32),
    }


def empty_rows(n: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """`n` all-padding example rows (segment 0, loss mask 0)."""
  return {
      "inputs": np.full((n, seq_len), pad_id, np.int32),
      "targets": np.full((n, seq_len), pad_id, np.int32),
      "positions": np.zeros((n, seq_len), np.int32),
      "segment_ids": np.zeros((n, seq_len), np.int32),
      "loss_mask": np.zeros((n, seq_len), np.float32),
  }


class PadBatch(grain.transforms.Map):
  """Pads a short final batch with all-padding rows to a static batch size."""

  def __init__(self, batch_size: int, seq_len: int, pad_id: int):
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    short = self.batch_size - len(batch["inputs"])
    if short <= 0:
      return batch
    pad = empty_rows(short, self.seq_len, self.pad_id)
    return {k: np.concatenate([batch[k], pad[k]], axis=0) for k in BATCH_KEYS}
