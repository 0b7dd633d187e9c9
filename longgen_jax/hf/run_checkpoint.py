"""A TRAINER run (``longgen_jax.train``: ``WORKDIR/checkpoints/<step>``) for export: the canonical
parameters (read by ``longgen_jax.ckpt.restore_run``, checksum-verified) plus provenance for the
HF config: token ids and generation config come from the run's ``init_from`` when that is an HF
directory or an imported checkpoint, the tokenizer from the run's data config.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from longgen_jax import ckpt
from longgen_jax.hf import checkpoint as ckpt_lib
from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.hf_config import read_hf_config
from longgen_jax.hf.tokenizer_files import tokenizer_files
from longgen_jax.model.config import ModelConfig


def _provenance(config: dict[str, Any]) -> tuple[dict | None, dict | None, str | None]:
  """(source HF config, generation config, tokenizer dir) from init_from / data.tokenizer."""
  hf, gen, tok = None, None, None
  src = config.get("init_from") or ""
  try:
    kind = ckpt.kind_of(src, what="init_from") if src else None
  except ckpt.CheckpointReadError:   # moved or deleted since: no provenance
    kind = None
  if kind == ckpt.CONVERTED:
    meta = ckpt_lib.read_meta(src)
    hf, gen = meta.get("hf_config"), meta.get("generation_config")
    tok = os.path.join(src, meta["tokenizer"]) if meta.get("tokenizer") else None
  elif kind == ckpt.HF:
    hf = read_hf_config(src)
    gen_path = os.path.join(src, "generation_config.json")
    gen = json.load(open(gen_path)) if os.path.exists(gen_path) else None
    tok = src if tokenizer_files(src) else None
  data_tok = (config.get("data") or {}).get("tokenizer")
  path = data_tok.get("path") if isinstance(data_tok, dict) else data_tok
  if isinstance(path, str) and path not in ("", "byte") and os.path.isdir(path):
    tok = path   # the tokenizer the run actually trained with
  return hf, gen, tok


def load_run(path: str) -> tuple[dict[str, Any], ModelConfig, dict[str, Any]]:
  """``(canonical params (host numpy), model config, info)`` of the newest step under ``path``.

  ``info`` has ``step``, ``hf_config``, ``generation_config``, ``tokenizer_dir`` and
  ``byte_tokenizer`` (the run trained with the byte tokenizer and no tokenizer directory).
  """
  try:
    run = ckpt.restore_run(path)
    cfg = run.cfg
  except ckpt.CheckpointReadError as e:
    raise HFConversionError(str(e)) from None
  params = jax.device_get(run.params)
  hf, gen, tok = _provenance(run.config)
  data_tok = (run.config.get("data") or {}).get("tokenizer")
  byte = tok is None and (data_tok in (None, "byte") or (isinstance(data_tok, dict)
                                                         and data_tok.get("type") == "byte"))
  return params, cfg, {"step": run.step, "hf_config": hf, "generation_config": gen,
                       "tokenizer_dir": tok, "byte_tokenizer": byte}
