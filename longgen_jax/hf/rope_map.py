"""RoPE: HF ``rope_parameters`` (or legacy ``rope_theta`` + ``rope_scaling``) <-> RopeConfig."""

from __future__ import annotations

from typing import Any, Mapping

from longgen_jax.hf.errors import HFConversionError
from longgen_jax.model.config import RopeConfig

# HF rope_type -> our RopeConfig.scaling
_HF_TO_OURS = {"default": "none", "linear": "linear", "dynamic": "dynamic_ntk", "yarn": "yarn",
               "llama3": "llama3"}
_OURS_TO_HF = {v: k for k, v in _HF_TO_OURS.items()}


def hf_rope_parameters(hf: Mapping[str, Any]) -> dict[str, Any]:
  """The rope dict of a config.json in the transformers-5 form (``rope_type`` + ``rope_theta``)."""
  params = hf.get("rope_parameters")
  if params is None:
    params = dict(hf.get("rope_scaling") or {})
    if "type" in params and "rope_type" not in params:
      params["rope_type"] = params.pop("type")
  else:
    params = dict(params)
  if "full_attention" in params or "sliding_attention" in params:
    raise HFConversionError("config.json rope_parameters is per layer type; only one RoPE for "
                            "all layers is supported")
  params.setdefault("rope_type", "default")
  params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
  return params


def rope_from_hf(hf: Mapping[str, Any]) -> RopeConfig:
  """RopeConfig equal to what transformers computes for this config.json."""
  p = hf_rope_parameters(hf)
  kind = p["rope_type"]
  if kind not in _HF_TO_OURS:
    raise HFConversionError(f"config.json rope_type {kind!r} is not supported; supported: "
                            f"{sorted(_HF_TO_OURS)}")
  if p.get("partial_rotary_factor", 1.0) != 1.0:
    raise HFConversionError("config.json partial_rotary_factor != 1 is not supported")
  fields: dict[str, Any] = {"theta": float(p["rope_theta"]), "scaling": _HF_TO_OURS[kind]}
  if kind != "default":
    fields["factor"] = float(p.get("factor", 1.0))
  max_pos = int(hf.get("max_position_embeddings", 4096))
  orig = int(p.get("original_max_position_embeddings") or max_pos)
  if kind == "dynamic":
    fields["original_max_position"] = max_pos   # HF dynamic NTK scales past max_position_embeddings
  elif kind in ("yarn", "llama3"):
    fields["original_max_position"] = orig
  if kind == "llama3":
    fields["low_freq_factor"] = float(p["low_freq_factor"])
    fields["high_freq_factor"] = float(p["high_freq_factor"])
  if kind == "yarn":
    for hf_key, ours in (("beta_fast", "beta_fast"), ("beta_slow", "beta_slow"),
                         ("attention_factor", "attention_factor"), ("mscale", "mscale"),
                         ("mscale_all_dim", "mscale_all_dim"), ("truncate", "truncate")):
      if p.get(hf_key) is not None:
        fields[ours] = p[hf_key]
  return RopeConfig(**fields)


def rope_to_hf(rope: RopeConfig) -> dict[str, Any]:
  """transformers-5 ``rope_parameters`` for a RopeConfig."""
  out: dict[str, Any] = {"rope_type": _OURS_TO_HF[rope.scaling], "rope_theta": float(rope.theta)}
  if rope.scaling == "none":
    return out
  out["factor"] = float(rope.factor)
  if rope.scaling in ("yarn", "llama3"):
    out["original_max_position_embeddings"] = int(rope.original_max_position)
  if rope.scaling == "llama3":
    out["low_freq_factor"] = float(rope.low_freq_factor)
    out["high_freq_factor"] = float(rope.high_freq_factor)
  if rope.scaling == "yarn":
    out.update(beta_fast=rope.beta_fast, beta_slow=rope.beta_slow, truncate=rope.truncate)
    if rope.attention_factor is not None:
      out["attention_factor"] = rope.attention_factor
    if rope.mscale:
      out["mscale"] = rope.mscale
    if rope.mscale_all_dim:
      out["mscale_all_dim"] = rope.mscale_all_dim
  return out
