"""Read-only access to the safetensors shards of a Hugging Face model directory, tensor by tensor.

Never loads pickle files: a directory with only ``pytorch_model.bin`` (or ``*.pt``) is refused.
Tensors are opened lazily with ``safetensors.safe_open`` and read by slice, so a caller can read
just the part of a tensor that one device needs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_dtypes
import numpy as np

from longgen_jax.hf.errors import HFConversionError

INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _torch_to_numpy(t) -> np.ndarray:
  """A CPU torch tensor -> numpy without going through float32 (bf16 / fp8 kept bit-exact)."""
  import torch  # the "pt" framework of safe_open is the only one that reads bf16 slices
  t = t.contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
    np_dtype = ml_dtypes.float8_e4m3fn if t.dtype == torch.float8_e4m3fn else ml_dtypes.float8_e5m2
    return t.view(torch.uint8).numpy().view(np_dtype)
  return t.numpy()


class HFShards:
  """Maps every tensor name of a model directory to its shard file; reads tensors lazily."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    if not os.path.isdir(hf_dir):
      raise HFConversionError(f"Hugging Face model directory {hf_dir} does not exist")
    self.weight_map = self._weight_map()
    self._handles: dict[str, Any] = {}

  def _weight_map(self) -> dict[str, str]:
    index = os.path.join(self.hf_dir, INDEX_FILE)
    if os.path.exists(index):
      try:
        with open(index) as f:
          wmap = json.load(f).get("weight_map")
      except (ValueError, AttributeError) as e:
        raise HFConversionError(f"{index} is not a valid JSON index ({e})") from None
      if not isinstance(wmap, dict) or not wmap:
        raise HFConversionError(f"{index} has no weight_map")
      for name, shard in sorted(wmap.items()):
        if not os.path.exists(os.path.join(self.hf_dir, shard)):
          raise HFConversionError(f"shard {shard} (holding tensor {name}) listed in {INDEX_FILE} "
                                  f"is missing from {self.hf_dir}")
      return dict(wmap)
    files = sorted(f for f in os.listdir(self.hf_dir) if f.endswith(".safetensors"))
    if not files:
      pickles = sorted(f for f in os.listdir(self.hf_dir) if f.endswith((".bin", ".pt", ".pth")))
      if pickles:
        raise HFConversionError(
            f"{self.hf_dir} holds only pickle weights ({', '.join(pickles)}); refusing to load "
            "pickle files: convert them to safetensors first (e.g. on a trusted machine)")
      raise HFConversionError(f"no *.safetensors weights in {self.hf_dir}")
    from safetensors import safe_open
    wmap: dict[str, str] = {}
    for fname in files:
      try:
        handle = safe_open(os.path.join(self.hf_dir, fname), framework="pt")
      except Exception as e:  # noqa: BLE001 -- a truncated or garbage file
        raise HFConversionError(f"cannot read {os.path.join(self.hf_dir, fname)}: not a complete "
                                f"safetensors file ({str(e).splitlines()[0]})") from None
      with handle as f:
        for name in f.keys():
          if name in wmap:
            raise HFConversionError(f"tensor {name} is in both {wmap[name]} and {fname}")
          wmap[name] = fname
    return wmap

  def names(self) -> list[str]:
    return sorted(self.weight_map)

  def _open(self, name: str):
    if name not in self.weight_map:
      raise HFConversionError(f"tensor {name} is not in the checkpoint {self.hf_dir}")
    fname = self.weight_map[name]
    if fname not in self._handles:
      from safetensors import safe_open
      path = os.path.join(self.hf_dir, fname)
      try:
        self._handles[fname] = safe_open(path, framework="pt")
      except Exception as e:  # corrupt / truncated file
        raise HFConversionError(f"cannot read shard {path} (tensor {name}): not a complete "
                                f"safetensors file ({str(e).splitlines()[0]})") from None
    try:
      return self._handles[fname].get_slice(name)
    except Exception as e:
      raise HFConversionError(f"tensor {name} is missing from its shard {fname}: {e}") from None

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open(name).get_shape())

  def dtype(self, name: str) -> str:
    """safetensors dtype string (``F32``, ``BF16``, ...)."""
    return self._open(name).get_dtype()

  def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
    """The tensor (or ``index`` slice of it) as numpy, dtype preserved."""
    sl = self._open(name)
    try:
      t = sl[index] if index is not None else sl[:]
    except Exception as e:  # noqa: BLE001 -- the data part of a damaged file
      raise HFConversionError(f"cannot read tensor {name} from {self.weight_map[name]} in "
                              f"{self.hf_dir} ({str(e).splitlines()[0]})") from None
    return _torch_to_numpy(t)

  def close(self) -> None:
    self._handles.clear()

