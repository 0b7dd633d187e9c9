"""The converted checkpoint written by ``import_hf`` and read by ``export`` / ``load_for_training``.

Layout of ``CKPT/``::

  longgen_checkpoint.json   {"format", "model": ModelConfig.to_dict(), "tensors": {key: {shape,
                             dtype}}, "source": provenance, "hf_config": the source config.json,
                             "generation_config": dict | null, "tokenizer": "tokenizer" | null}
  params/                   orbax (StandardCheckpointer) PyTree of the CANONICAL parameters
                            (docs/architecture.md §4), except that ``layers`` is stored as a dict
                            {"0": {...}, "1": {...}} so one layer can be restored at a time
  tokenizer/                the source tokenizer files, byte for byte (absent if none)

Arrays are restored straight into the shardings the caller asks for (default: one device).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.names import tensor_plan
from longgen_jax.model.config import ModelConfig

FORMAT = "longgen_canonical/1"
META_FILE = "longgen_checkpoint.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"

ShardingFn = Callable[[tuple, tuple[int, ...]], jax.sharding.Sharding]


def is_checkpoint(path: str) -> bool:
  return os.path.exists(os.path.join(path, META_FILE))


def to_stored(params: Mapping[str, Any]) -> dict[str, Any]:
  """Canonical tree -> stored tree (``layers`` list -> dict keyed by layer index)."""
  out = {k: v for k, v in params.items() if k != "layers"}
  out["layers"] = {str(i): dict(layer) for i, layer in enumerate(params["layers"])}
  return out


def from_stored(stored: Mapping[str, Any]) -> dict[str, Any]:
  out = {k: v for k, v in stored.items() if k != "layers"}
  layers = stored["layers"]
  out["layers"] = [dict(layers[str(i)]) for i in range(len(layers))]
  return out


def write_meta(out_dir: str, meta: Mapping[str, Any]) -> None:
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True, default=list)


def read_meta(path: str) -> dict[str, Any]:
  meta_path = os.path.join(path, META_FILE)
  if not os.path.exists(meta_path):
    raise HFConversionError(f"{path} is not a longgen checkpoint (no {META_FILE})")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise HFConversionError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
  return meta


def model_config(meta: Mapping[str, Any]) -> ModelConfig:
  return ModelConfig.from_dict(meta["model"])


def tensor_table(params: Mapping[str, Any], cfg: ModelConfig) -> dict[str, dict[str, Any]]:
  """{key: {"shape", "dtype"}} of every parameter (checked against the plan)."""
  from longgen_jax.hf.names import get_path
  table = {}
  for p in tensor_plan(cfg):
    a = get_path(params, p.path)
    if tuple(a.shape) != p.shape:
      raise HFConversionError(f"parameter {p.key} has shape {tuple(a.shape)}, expected {p.shape}")
    table[p.key] = {"shape": list(p.shape), "dtype": str(np.dtype(a.dtype))}
  return table


def save_params(out_dir: str, params: Mapping[str, Any]) -> None:
  """Writes the canonical tree under ``out_dir/params`` (orbax, multi-host safe)."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(os.path.join(out_dir, PARAMS_DIR)), to_stored(params))
  ckptr.wait_until_finished()


def _single_device(path, shape):
  del path, shape
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def restore_params(path: str, *, sharding_fn: ShardingFn | None = None,
                   dtype: str | None = None) -> tuple[dict[str, Any], ModelConfig]:
  """Restores the whole canonical tree as jax arrays placed by ``sharding_fn(path, shape)``."""
  import orbax.checkpoint as ocp
  meta = read_meta(path)
  cfg = model_config(meta)
  sharding_fn = sharding_fn or _single_device
  abstract: dict[str, Any] = {"layers": [dict() for _ in range(cfg.n_layers)]}
  for p in tensor_plan(cfg):
    info = meta["tensors"].get(p.key)
    if info is None:
      raise HFConversionError(f"{path}/{META_FILE} has no entry for tensor {p.key}")
    leaf = jax.ShapeDtypeStruct(p.shape, np.dtype(info["dtype"]),
                                sharding=sharding_fn(p.path, p.shape))
    if p.path[0] == "layers":
      abstract["layers"][p.path[1]][p.path[2]] = leaf
    else:
      abstract[p.path[0]] = leaf
  restored = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(path, PARAMS_DIR)), to_stored(abstract))
  params = from_stored(restored)
  if dtype is not None:
    params = jax.tree.map(lambda a: a.astype(dtype), params)
  return params, cfg


def restore_numpy(path: str, keys: list[str], meta: Mapping[str, Any]) -> dict[str, Any]:
  """Restores a subset of the stored tree to host numpy: ``keys`` are top-level names or
  ``layers/<i>`` (one layer at a time keeps host memory at one layer for export)."""
  import orbax.checkpoint as ocp
  cfg = model_config(meta)
  item: dict[str, Any] = {}
  for p in tensor_plan(cfg):
    top = p.path[0] if p.path[0] != "layers" else f"layers/{p.path[1]}"
    if top not in keys:
      continue
    leaf = jax.ShapeDtypeStruct(p.shape, np.dtype(meta["tensors"][p.key]["dtype"]))
    if p.path[0] == "layers":
      item.setdefault("layers", {}).setdefault(str(p.path[1]), {})[p.path[2]] = leaf
    else:
      item[p.path[0]] = leaf
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  return ocp.PyTreeCheckpointer().restore(
      os.path.abspath(os.path.join(path, PARAMS_DIR)),
      args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
