"""Run metrics: a JSON-lines file, TensorBoard scalars, and the MFU convention.

``WORKDIR/metrics.jsonl`` gets one JSON object per training step (plus ``event`` records for
start, resume and stop), appended and flushed as it happens, so it survives a killed process and
a resumed run continues the same file. A run resumed from step S first moves the records after S
(steps that will be redone, and a torn last line) to ``metrics.redone.jsonl``
(:func:`set_aside_after`), so ``metrics.jsonl`` holds each step once and nothing is deleted.
TensorBoard scalars go to ``WORKDIR/tb`` every step (flushed every ``train.log_every`` steps);
a resumed run purges the redone steps from the TensorBoard curves too.

MFU = (model FLOPs of the step) / (step seconds x devices x peak FLOP/s per device). Model FLOPs
come from ``longgen_jax.model.flops``: matmul FLOPs (6 per parameter-token for forward + backward,
including the unembedding) plus attention FLOPs counted only over the (query, key) pairs a layer
really computes (its causal / sink-window / strided pattern), times 3 for training. Remat
recomputation is NOT counted (that would be "hardware FLOPs"). The peak is the vendor's dense
bf16 spec (H100/H200 SXM: 989 TFLOP/s), not a measured matmul rate; on CPU no peak is known and
MFU is not shown unless ``train.peak_tflops`` is set.

Packed rows (:class:`StepFlops`): ``mfu`` counts, per row, attention over same-document pairs
only (the documents are the runs of equal ``segment_ids``; the padding run at the end of a row is
one more document, as in the kernels, whose segment mask is plain id equality), which is what
kernels that skip cross-document work compute. Matmul FLOPs count every token, padding included,
like ``tokens_per_s``. ``mfu_row`` is the old figure, each row counted as one causal document of
``seq_len`` (MaxText's convention), which overstates MFU on packed batches.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping

import numpy as np

from longgen_jax.model.config import ModelConfig
from longgen_jax.model.flops import flops_per_token

# Dense bf16 peak TFLOP/s per device, by substring of ``jax.Device.device_kind`` (lower case).
PEAK_TFLOPS = (
    ("h200", 989.0),
    ("h100", 989.0),   # SXM spec; PCIe parts are lower: set train.peak_tflops
    ("gh200", 989.0),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("l4", 121.0),
    ("tpu v6", 918.0),
    ("tpu v5p", 459.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v4", 275.0),
)


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float | None:
  """Peak FLOP/s of one device: ``override_tflops`` if > 0, else the table, else None."""
  if override_tflops and override_tflops > 0:
    return float(override_tflops) * 1e12
  kind = device_kind.lower()
  for key, tflops in PEAK_TFLOPS:
    if key in kind:
      return tflops * 1e12
  return None


def doc_lengths(segment_ids) -> tuple[int, ...]:
  """Lengths of the runs of equal ids in one row of ``segment_ids`` (in order; O(row))."""
  s = np.asarray(segment_ids).reshape(-1)
  cuts = np.flatnonzero(s[1:] != s[:-1]) + 1
  return tuple(np.diff(np.concatenate([[0], cuts, [s.size]])).tolist())


class StepFlops:
  """Model FLOPs of one step's rows from their ``segment_ids`` (see the module docstring).

  A row of one run (or a batch without segment ids) costs exactly the old whole-row figure,
  ``flops_per_token(cfg, seq_len).total * seq_len``; a row of several runs costs
  ``flops_per_token(cfg, seq_len, doc_lens=...).total * seq_len``, cached per distinct tuple of
  document lengths (the last ``cache_size``). Host-side numpy, O(seq_len) per row.
  """

  def __init__(self, cfg: ModelConfig, seq_len: int, *, training: bool = True,
               cache_size: int = 1024):
    self.cfg, self.seq_len, self.training = cfg, int(seq_len), training
    self.row_flops = flops_per_token(cfg, self.seq_len, training=training).total * self.seq_len
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_size

  def packed_row_flops(self, doc_lens: tuple[int, ...]) -> float:
    """FLOPs of one row packed with documents of ``doc_lens`` tokens (same-document pairs)."""
    if len(doc_lens) <= 1:
      return self.row_flops
    hit = self._cache.get(doc_lens)
    if hit is None:
      hit = flops_per_token(self.cfg, self.seq_len, training=self.training,
                            doc_lens=doc_lens).total * self.seq_len
      self._cache[doc_lens] = hit
      if len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    else:
      self._cache.move_to_end(doc_lens)
    return hit

  def __call__(self, segment_ids: np.ndarray | None, rows: int | None = None) -> float:
    """FLOPs of a ``[rows, seq_len]`` batch; ``segment_ids`` None: ``rows`` whole-row rows."""
    if segment_ids is None:
      if rows is None:
        raise ValueError("rows is needed when segment_ids is None")
      return rows * self.row_flops
    seg = np.asarray(segment_ids)
    if seg.ndim != 2 or seg.shape[1] != self.seq_len:
      raise ValueError(f"segment_ids must be [rows, {self.seq_len}], got {seg.shape}")
    packed = np.any(seg[:, 1:] != seg[:, :-1], axis=1)
    total = float(np.count_nonzero(~packed)) * self.row_flops
    for r in np.flatnonzero(packed):
      total += self.packed_row_flops(doc_lengths(seg[r]))
    return total


class MetricsWriter:
  """Writes ``metrics.jsonl`` (every call) and TensorBoard scalars (when asked) under ``workdir``.

  Only process 0 writes; other processes get a no-op writer.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               purge_step: int | None = None):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge_step)

  def write(self, record: Mapping[str, Any]) -> None:
    """Appends one JSON line and flushes it."""
    if self._jsonl is None:
      return
    self._jsonl.write(json.dumps(dict(record), sort_keys=True) + "\n")
    self._jsonl.flush()

  def scalars(self, step: int, values: Mapping[str, Any], flush: bool = True) -> None:
    """TensorBoard scalars (numbers only; None values are skipped)."""
    if self._tb is None:
      return
    for k, v in values.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(f"train/{k}", v, step)
    if flush:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def set_aside_after(workdir: str, step: int) -> int:
  """Moves the records of ``metrics.jsonl`` after ``step`` to ``metrics.redone.jsonl``.

  A record is moved when its ``step`` is greater than ``step`` or it does not parse (the torn
  last line of a killed run). The moved lines are appended (and synced) to
  ``metrics.redone.jsonl`` before ``metrics.jsonl`` is atomically replaced, so a crash in between
  can duplicate a line there but never lose one. Returns the number of records moved.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return 0
  keep, moved = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        later = json.loads(line).get("step", 0) > step
      except (ValueError, AttributeError, TypeError):
        later = True
      (moved if later else keep).append(line if line.endswith("\n") else line + "\n")
  if not moved:
    return 0
  with open(os.path.join(workdir, "metrics.redone.jsonl"), "a", encoding="utf-8") as f:
    f.writelines(moved)
    f.flush()
    os.fsync(f.fileno())
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(keep)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return len(moved)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of ``WORKDIR/metrics.jsonl`` (for tests and notebooks)."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
