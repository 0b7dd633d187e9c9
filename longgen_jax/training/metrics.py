"""Run metrics: a JSON-lines file, TensorBoard scalars, and the MFU convention.

``WORKDIR/metrics.jsonl`` gets one JSON object per training step (plus ``event`` records for
start, resume and stop), appended and flushed as it happens, so it survives a killed process and
a resumed run continues the same file. TensorBoard scalars go to ``WORKDIR/tb`` every
``train.log_every`` steps.

MFU = (model FLOPs of the step) / (step seconds x devices x peak FLOP/s per device). Model FLOPs
come from ``longgen_jax.model.flops``: matmul FLOPs (6 per parameter-token for forward + backward,
including the unembedding) plus attention FLOPs counted only over the (query, key) pairs a layer
really computes (its causal / sink-window / strided pattern), times 3 for training. Remat
recomputation is NOT counted (that would be "hardware FLOPs"). The peak is the vendor's dense
bf16 spec (H100/H200 SXM: 989 TFLOP/s), not a measured matmul rate; on CPU no peak is known and
MFU is not shown unless ``train.peak_tflops`` is set.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

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


class MetricsWriter:
  """Writes ``metrics.jsonl`` (every call) and TensorBoard scalars (when asked) under ``workdir``.

  Only process 0 writes; other processes get a no-op writer.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
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
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, record: Mapping[str, Any]) -> None:
    """Appends one JSON line and flushes it."""
    if self._jsonl is None:
      return
    self._jsonl.write(json.dumps(dict(record), sort_keys=True) + "\n")
    self._jsonl.flush()

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    """TensorBoard scalars (numbers only; None values are skipped)."""
    if self._tb is None:
      return
    for k, v in values.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(f"train/{k}", v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of ``WORKDIR/metrics.jsonl`` (for tests and notebooks)."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
