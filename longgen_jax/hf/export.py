"""Canonical parameters / longgen checkpoint -> Hugging Face model directory.

  python -m longgen_jax.hf.export --checkpoint=CKPT --out=DIR [--target=auto|llama|longgen|
      stock_sliding] [--dtype=bfloat16] [--max_shard_gb=5]

Writes safetensors shards (+ index), ``config.json``, ``generation_config.json`` and the tokenizer
files (copied unchanged from the import; a trainer run on the byte tokenizer gets generated ones
that ``AutoTokenizer`` loads, ids = bytes + 3, BOS 1 added, EOS 2). ``longgen`` also ships ``configuration_longgen.py``,
``cache_longgen.py`` and ``modeling_longgen.py`` with an ``auto_map`` (load with
``trust_remote_code=True``). A checkpoint is restored one layer at a time, so host memory stays
at about one layer plus the embedding. Targets: see ``targets.py`` and ``docs/hf.md``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import numpy as np

from longgen_jax import ckpt
from longgen_jax.hf import checkpoint as ckpt_lib
from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.names import TensorPlan, get_path, tensor_plan, to_hf
from longgen_jax.hf.shard_writer import DEFAULT_MAX_SHARD_BYTES, ShardWriter
from longgen_jax.hf.targets import REMOTE_CODE_FILES, build_config, resolve_target
from longgen_jax.hf.tokenizer_files import copy_tokenizer
from longgen_jax.model.config import ModelConfig

Fetch = Callable[[str], Mapping[str, Any]]   # group ("embed", "layers/3", ...) -> stored subtree
_HERE = os.path.dirname(os.path.abspath(__file__))


def _group(p: TensorPlan) -> str:
  return f"layers/{p.path[1]}" if p.path[0] == "layers" else p.path[0]


def _stored_path(p: TensorPlan) -> tuple:
  return ("layers", str(p.path[1]), p.path[2]) if p.path[0] == "layers" else p.path


def write_weights(out_dir: str, cfg: ModelConfig, fetch: Fetch, dtype: str | None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Streams every tensor (group by group) into HF-named safetensors shards."""
  writer = ShardWriter(out_dir, max_shard_bytes)
  group, data = None, None
  for p in tensor_plan(cfg):
    if _group(p) != group:
      group, data = _group(p), fetch(_group(p))
    a = np.asarray(jax.device_get(get_path(data, _stored_path(p))))
    if tuple(a.shape) != p.shape:
      raise HFConversionError(f"parameter {p.key} has shape {tuple(a.shape)}, expected {p.shape}")
    if dtype is not None:
      a = a.astype(dtype)
    writer.add(p.hf_name, to_hf(p, a))
  return writer.close()


def _write_generation_config(out_dir: str, generation_config: Mapping | None,
                             source: Mapping | None) -> None:
  path = os.path.join(out_dir, "generation_config.json")
  if generation_config is not None:
    with open(path, "w") as f:
      json.dump(dict(generation_config), f, indent=2, sort_keys=True)
    return
  from transformers import GenerationConfig
  src = source or {}
  GenerationConfig(bos_token_id=src.get("bos_token_id"), eos_token_id=src.get("eos_token_id"),
                   pad_token_id=src.get("pad_token_id")).save_pretrained(out_dir)


def _prepare_out(out_dir: str, overwrite: bool) -> None:
  if os.path.exists(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise HFConversionError(f"output directory {out_dir} exists and is not empty")
    shutil.rmtree(out_dir)
  os.makedirs(out_dir, exist_ok=True)


def export_from_fetch(fetch: Fetch, cfg: ModelConfig, out_dir: str, *, target: str = "auto",
                      dtype: str | None = None, source_hf: Mapping | None = None,
                      generation_config: Mapping | None = None, tokenizer_src: str | None = None,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      overwrite: bool = False, byte_tokenizer: bool = False) -> str:
  """Writes a complete HF directory; returns the resolved target.

  ``byte_tokenizer``: without ``tokenizer_src``, write tokenizer files for the byte tokenizer
  (``hf/byte_tokenizer.py``), so the export loads with ``AutoTokenizer`` too."""
  target = resolve_target(target, cfg)
  _prepare_out(out_dir, overwrite)
  out_dtype = dtype or cfg.param_dtype
  write_weights(out_dir, cfg, fetch, dtype, max_shard_bytes)
  build_config(cfg, target, source_hf, out_dtype).save_pretrained(out_dir)
  if target == "longgen":
    for fname in REMOTE_CODE_FILES:
      shutil.copyfile(os.path.join(_HERE, fname), os.path.join(out_dir, fname))
  _write_generation_config(out_dir, generation_config, source_hf)
  if tokenizer_src:
    copy_tokenizer(tokenizer_src, out_dir)
  elif byte_tokenizer:
    from longgen_jax.hf.byte_tokenizer import write_byte_tokenizer  # pylint: disable=import-outside-toplevel
    write_byte_tokenizer(out_dir)
  return target


def export_params(params: Mapping[str, Any], cfg: ModelConfig, out_dir: str, **kwargs) -> str:
  """In-memory canonical tree -> HF directory (see ``export_from_fetch`` for kwargs)."""
  stored = ckpt_lib.to_stored(params)
  return export_from_fetch(lambda group: stored, cfg, out_dir, **kwargs)


def export_checkpoint(checkpoint: str, out_dir: str, *, target: str = "auto",
                      dtype: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      overwrite: bool = False) -> str:
  """Checkpoint -> HF directory; returns the resolved target.

  ``checkpoint`` is an imported checkpoint (``longgen_checkpoint.json``: restored one layer at a
  time) or a trainer run (``WORKDIR``, ``WORKDIR/checkpoints`` or ``.../checkpoints/<step>``:
  newest step, parameters restored whole on the host).
  """
  kwargs = dict(target=target, dtype=dtype, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
  if os.path.realpath(out_dir) == os.path.realpath(checkpoint):
    raise HFConversionError(f"--out {out_dir} is the checkpoint itself; choose another directory")
  try:
    kind = ckpt.require_kind(checkpoint, (ckpt.CONVERTED, ckpt.TRAINER), what="checkpoint")
  except ckpt.CheckpointReadError as e:
    raise HFConversionError(str(e)) from None
  if kind == ckpt.TRAINER:
    from longgen_jax.hf import run_checkpoint  # pylint: disable=import-outside-toplevel
    params, cfg, info = run_checkpoint.load_run(checkpoint)
    return export_params(params, cfg, out_dir, source_hf=info["hf_config"],
                         generation_config=info["generation_config"],
                         tokenizer_src=info["tokenizer_dir"],
                         byte_tokenizer=info["byte_tokenizer"], **kwargs)
  meta = ckpt_lib.read_meta(checkpoint)
  cfg = ckpt_lib.model_config(meta)
  tok = meta.get("tokenizer")

  def fetch(group: str):
    return ckpt_lib.restore_numpy(checkpoint, [group], meta)

  return export_from_fetch(
      fetch, cfg, out_dir, source_hf=meta.get("hf_config"),
      generation_config=meta.get("generation_config"),
      tokenizer_src=os.path.join(checkpoint, tok) if tok else None, **kwargs)


def main(argv=None) -> None:
  from longgen_jax.hf import export_cli
  export_cli.run(argv)


if __name__ == "__main__":
  main()
