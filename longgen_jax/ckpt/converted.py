"""Reads an imported checkpoint (``longgen_checkpoint.json``) or a Hugging Face model directory.

The decision is made here (``kinds.require_kind``); the reading itself is ``hf.checkpoint``'s
(orbax, arrays straight into their shardings) or ``hf.import_hf``'s (safetensors, one tensor at
a time). Both are imported on first use (``hf.import_hf`` imports this package).
"""

from __future__ import annotations

from typing import Any, Callable

from longgen_jax.ckpt.kinds import CONVERTED, HF, require_kind
from longgen_jax.model.config import ModelConfig

ShardingFn = Callable[[tuple, tuple[int, ...]], Any]   # (canonical path, shape) -> Sharding
# The fields that fix a parameter's shape: an imported checkpoint must match the caller's on these.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                "ffn_dim", "tie_embeddings")


def read_converted(path: str, model_cfg: ModelConfig | None = None, *,
                   sharding_fn: ShardingFn | None = None, what: str = "checkpoint",
                   ) -> tuple[dict[str, Any], ModelConfig]:
  """``(canonical params, ModelConfig)`` of an imported checkpoint or an HF model directory.

  ``model_cfg``: None reads the model as saved (its own config, dtypes); else the shapes must
  match it (``HFConversionError`` otherwise), the arrays come in its ``param_dtype`` and the
  config returned is ``model_cfg``. Each array is placed by ``sharding_fn(path, shape)`` (default
  one device). A path of another kind raises ``CheckpointReadError`` (``what`` names the option).
  """
  kind = require_kind(path, (CONVERTED, HF), what)
  if kind == HF:
    from longgen_jax.hf import import_hf  # pylint: disable=import-outside-toplevel
    return import_hf.import_params(path, model_cfg, sharding_fn=sharding_fn)
  from longgen_jax.hf import checkpoint as hf_ckpt  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf.errors import HFConversionError  # pylint: disable=import-outside-toplevel
  params, stored = hf_ckpt.restore_params(
      path, sharding_fn=sharding_fn, dtype=None if model_cfg is None else model_cfg.param_dtype)
  if model_cfg is None:
    return params, stored
  for name in SHAPE_FIELDS:
    if getattr(stored, name) != getattr(model_cfg, name):
      raise HFConversionError(f"model config {name}={getattr(model_cfg, name)} does not match "
                              f"the checkpoint {path} ({name}={getattr(stored, name)})")
  return params, model_cfg
