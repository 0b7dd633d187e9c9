"""Hugging Face ``config.json`` <-> ``ModelConfig``.

Import accepts Llama-shaped decoders: ``LlamaForCausalLM`` (Llama 2, Llama 3 / 3.1 with its RoPE
scaling, GQA), ``MistralForCausalLM`` without a sliding window, and our own exports
(``LongGenForCausalLM`` remote code, ``MinistralForCausalLM`` from ``--target=stock_sliding``),
whose per-layer patterns are read back.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from pallas_kernels.spec import AttentionSpec

from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.rope_map import rope_from_hf
from longgen_jax.model.config import ModelConfig

SUPPORTED_ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                   "LongGenForCausalLM": "longgen", "MinistralForCausalLM": "ministral"}
# ModelConfig fields that must agree between the checkpoint and a user-given config.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                "tie_embeddings")


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise HFConversionError(f"no config.json in {hf_dir}")
  try:
    with open(path) as f:
      hf = json.load(f)
  except ValueError as e:
    raise HFConversionError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(hf, dict):
    raise HFConversionError(f"{path} must hold a JSON object, got {type(hf).__name__}")
  return hf


def architecture(hf: Mapping[str, Any]) -> str:
  """``llama`` | ``mistral`` | ``longgen`` | ``ministral``, or a one-line error."""
  archs = hf.get("architectures") or []
  known = [SUPPORTED_ARCHS[a] for a in archs if a in SUPPORTED_ARCHS]
  if known:
    return known[0]
  if not archs and hf.get("model_type") in SUPPORTED_ARCHS.values():
    return hf["model_type"]
  raise HFConversionError(
      f"unsupported architecture {archs or hf.get('model_type')!r} in config.json; supported: "
      f"{sorted(SUPPORTED_ARCHS)}")


def _check_llama_shaped(hf: Mapping[str, Any]) -> None:
  if hf.get("hidden_act", "silu") != "silu":
    raise HFConversionError(f"config.json hidden_act={hf['hidden_act']!r}: only silu (SwiGLU)")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise HFConversionError(f"config.json {flag}=true: biases are not supported")


def hf_layers(hf: Mapping[str, Any], arch: str, n_layers: int) -> tuple[AttentionSpec, ...]:
  """Per-layer patterns recorded in the config (all full for plain Llama)."""
  if arch in ("longgen", "ministral") and hf.get("longgen_layers"):
    specs = hf["longgen_layers"]   # our exports record the exact specs (block included)
    if len(specs) != n_layers:
      raise HFConversionError(f"config.json longgen_layers has {len(specs)} entries, "
                              f"num_hidden_layers={n_layers}")
    return tuple(AttentionSpec.from_dict(s) for s in specs)
  if arch == "longgen":
    return (AttentionSpec.full(),) * n_layers
  if arch == "mistral":
    if hf.get("sliding_window") not in (None, 0):
      raise HFConversionError(
          f"config.json MistralForCausalLM sliding_window={hf['sliding_window']}: sliding Mistral "
          "is not a plain Llama; only sliding_window=null is supported")
  if arch == "ministral":
    types = hf.get("layer_types") or ["full_attention"] * n_layers
    window = int(hf.get("sliding_window") or 0)
    block = next((b for b in (128, 64, 32, 16) if window % b == 0), None)
    if window <= 0 or block is None:
      raise HFConversionError(f"config.json sliding_window={window} must be a positive multiple "
                              "of 16 (our window is a whole number of blocks)")
    return tuple(AttentionSpec.sink_window(0, window, block) if t == "sliding_attention"
                 else AttentionSpec.full(block) for t in types)
  return (AttentionSpec.full(),) * n_layers


def model_config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """The ModelConfig that computes exactly what transformers computes for this config.json."""
  arch = architecture(hf)
  _check_llama_shaped(hf)
  try:
    n_layers = int(hf["num_hidden_layers"])
    n_heads = int(hf["num_attention_heads"])
    d_model = int(hf["hidden_size"])
    fields: dict[str, Any] = dict(
        vocab_size=int(hf["vocab_size"]), d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or d_model // n_heads),
        ffn_dim=int(hf["intermediate_size"]), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(hf.get("max_position_embeddings", 4096)), rope=rope_from_hf(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=float(hf.get("initializer_range", 0.02)))
  except KeyError as e:
    raise HFConversionError(f"config.json is missing the field {e.args[0]}") from None
  fields["layers"] = hf_layers(hf, arch, n_layers)
  fields.update(overrides)
  return ModelConfig(**fields)


def check_compatible(hf_cfg: ModelConfig, cfg: ModelConfig) -> None:
  """The user's ModelConfig must have the checkpoint's shapes (layout and RoPE may differ)."""
  for name in SHAPE_FIELDS:
    a, b = getattr(hf_cfg, name), getattr(cfg, name)
    if a != b:
      raise HFConversionError(f"model config {name}={b} does not match the checkpoint's "
                              f"config.json ({name}={a})")
  if abs(hf_cfg.norm_eps - cfg.norm_eps) > 1e-12:
    raise HFConversionError(f"model config norm_eps={cfg.norm_eps} does not match the "
                            f"checkpoint's rms_norm_eps={hf_cfg.norm_eps}")
