"""Writes numpy tensors into Hugging Face safetensors shards (+ index), one shard in memory at most.

Names follow transformers: a single ``model.safetensors`` when everything fits in one shard, else
``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np

DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _to_torch(a: np.ndarray):
  import torch
  a = np.array(a, copy=True, order="C")   # writable + contiguous (torch refuses read-only views)
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


class ShardWriter:
  """``add(name, array)`` tensors in order; ``close()`` names the shards and writes the index."""

  def __init__(self, out_dir: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
    self.out_dir = out_dir
    self.max_shard_bytes = int(max_shard_bytes)
    self._pending: dict[str, np.ndarray] = {}
    self._pending_bytes = 0
    self._shards: list[list[str]] = []   # tensor names per written shard
    self._total = 0

  def add(self, name: str, array: np.ndarray) -> None:
    if name in self._pending or any(name in s for s in self._shards):
      raise ValueError(f"tensor {name} written twice")
    if self._pending and self._pending_bytes + array.nbytes > self.max_shard_bytes:
      self._flush()
    self._pending[name] = array
    self._pending_bytes += array.nbytes
    self._total += array.nbytes

  def _tmp(self, i: int) -> str:
    return os.path.join(self.out_dir, f".shard-{i:05d}.safetensors.tmp")

  def _flush(self) -> None:
    from safetensors.torch import save_file
    save_file({k: _to_torch(v) for k, v in self._pending.items()}, self._tmp(len(self._shards)),
              metadata={"format": "pt"})
    self._shards.append(list(self._pending))
    self._pending, self._pending_bytes = {}, 0

  def close(self) -> list[str]:
    """Flushes, renames the shards, writes the index if needed; returns the shard file names."""
    if self._pending or not self._shards:
      self._flush()
    n = len(self._shards)
    names = (["model.safetensors"] if n == 1 else
             [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    weight_map = {}
    for i, (fname, tensors) in enumerate(zip(names, self._shards)):
      os.replace(self._tmp(i), os.path.join(self.out_dir, fname))
      os.chmod(os.path.join(self.out_dir, fname), 0o666 & ~_umask())   # safetensors writes 0600
      weight_map.update({t: fname for t in tensors})
    if n > 1:
      with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": self._total}, "weight_map": weight_map}, f,
                  indent=2, sort_keys=True)
    return names
