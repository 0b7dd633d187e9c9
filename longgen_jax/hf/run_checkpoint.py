"""Reads a TRAINER checkpoint (``longgen_jax.train``: ``WORKDIR/checkpoints/<step>``) for export.

The run's config (saved with every step) gives the ModelConfig and the tokenizer; the parameters
(an ``nnx.State`` of the model's ``nnx.Param``s) are restored, checksum-verified, through
``longgen_jax.training.checkpoint.Checkpointer`` and turned into the canonical tree. Provenance
for the HF config (token ids, generation config) comes from the run's ``init_from`` when that is
an HF directory or an imported checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import jax
from flax import nnx

from longgen_jax.hf import checkpoint as ckpt_lib
from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.hf_config import read_hf_config
from longgen_jax.hf.tokenizer_files import tokenizer_files
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import abstract_model, to_canonical


def is_run_checkpoint(path: str) -> bool:
  from longgen_jax.training.checkpoint import CheckpointError, latest_step_dir
  try:
    latest_step_dir(path)
    return True
  except CheckpointError:
    return False


@contextlib.contextmanager
def _quiet_orbax():
  """Silences orbax's absl warnings about read-only managers (restored on exit)."""
  from absl import logging as absl_logging
  old = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(old)


def _run_config(directory: str, step: int) -> dict[str, Any]:
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    return dict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
                ["config"])
  finally:
    manager.close()


def _provenance(config: dict[str, Any]) -> tuple[dict | None, dict | None, str | None]:
  """(source HF config, generation config, tokenizer dir) from init_from / data.tokenizer."""
  hf, gen, tok = None, None, None
  src = config.get("init_from") or ""
  if src and ckpt_lib.is_checkpoint(src):
    meta = ckpt_lib.read_meta(src)
    hf, gen = meta.get("hf_config"), meta.get("generation_config")
    tok = os.path.join(src, meta["tokenizer"]) if meta.get("tokenizer") else None
  elif src and os.path.exists(os.path.join(src, "config.json")):
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
  from longgen_jax.training.checkpoint import Checkpointer, abstract_like, latest_step_dir
  directory, step = latest_step_dir(path)
  with _quiet_orbax():
    config = _run_config(directory, step)
  try:
    cfg = ModelConfig.from_dict(config["model"])
  except (KeyError, ValueError) as e:
    raise HFConversionError(f"run config of {directory}/{step} has no valid model: {e}") from None
  graphdef, abstract, rest = nnx.split(abstract_model(cfg), nnx.Param, ...)
  with _quiet_orbax():
    reader = Checkpointer(directory, read_only=True)
    try:
      state, _ = reader.restore(step, {"params": abstract_like(abstract)}, params_only=True)
    finally:
      reader.close()
  if jax.tree.leaves(rest):
    rest = jax.jit(lambda: nnx.split(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[2])()
  model = nnx.merge(graphdef, state["params"], rest)
  params = jax.device_get(to_canonical(model))
  hf, gen, tok = _provenance(config)
  data_tok = (config.get("data") or {}).get("tokenizer")
  byte = tok is None and (data_tok in (None, "byte") or (isinstance(data_tok, dict)
                                                         and data_tok.get("type") == "byte"))
  return params, cfg, {"step": step, "hf_config": hf, "generation_config": gen,
                       "tokenizer_dir": tok, "byte_tokenizer": byte}
