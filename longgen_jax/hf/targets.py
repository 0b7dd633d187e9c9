"""Export targets: which transformers architecture a layout maps to, and its config.json.

  llama          stock ``LlamaForCausalLM``; every layer must be full attention.
  longgen        ``LongGenForCausalLM`` remote code (``trust_remote_code=True``): any mix of
                 full, sink_window and strided layers, with a per-layer evicting cache.
  stock_sliding  stock ``MinistralForCausalLM`` (``layer_types`` + ``sliding_window``): only
                 when every sparse layer is ``sink_window`` with sink 0 and one shared window.
                 HF's sliding mask is ``kv > q - sliding_window``, i.e. ``q - kv < window``:
                 exactly our ``i - j < window``, so ``sliding_window = window`` (no off-by-one).
  auto           llama when all layers are full, else longgen.
"""

from __future__ import annotations

from typing import Any, Mapping

from longgen_jax.hf.errors import HFConversionError
from longgen_jax.hf.rope_map import rope_to_hf
from longgen_jax.model.config import ModelConfig

TARGETS = ("auto", "llama", "longgen", "stock_sliding")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "longgen": "LongGenForCausalLM",
                 "stock_sliding": "MinistralForCausalLM"}
REMOTE_CODE_FILES = ("configuration_longgen.py", "cache_longgen.py", "modeling_longgen.py")
AUTO_MAP = {"AutoConfig": "configuration_longgen.LongGenConfig",
            "AutoModel": "modeling_longgen.LongGenModel",
            "AutoModelForCausalLM": "modeling_longgen.LongGenForCausalLM"}
_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def resolve_target(target: str, cfg: ModelConfig) -> str:
  if target not in TARGETS:
    raise HFConversionError(f"export target {target!r} is not one of {TARGETS}")
  all_full = all(s.is_full for s in cfg.layers)
  if target == "auto":
    return "llama" if all_full else "longgen"
  if target == "llama" and not all_full:
    bad = next(i for i, s in enumerate(cfg.layers) if not s.is_full)
    raise HFConversionError(f"target llama needs full attention everywhere; layer {bad} is "
                            f"{cfg.layers[bad]} (use --target=longgen)")
  if target == "stock_sliding":
    sliding_window(cfg)
  return target


def sliding_window(cfg: ModelConfig) -> int:
  """The one HF ``sliding_window`` of a window-only layout, or a one-line error."""
  windows = set()
  for i, s in enumerate(cfg.layers):
    if s.is_full:
      continue
    if s.kind != "sink_window" or s.sink != 0:
      raise HFConversionError(
          f"target stock_sliding needs sink_window layers with sink 0; layer {i} is {s} (stock "
          "HF/vLLM sliding caches drop sink tokens: use --target=longgen)")
    windows.add(s.window)
  if len(windows) != 1:
    raise HFConversionError(f"target stock_sliding needs exactly one window size, got "
                            f"{sorted(windows) or 'no sparse layer'}")
  return windows.pop()


def _common_fields(cfg: ModelConfig, source: Mapping[str, Any] | None, dtype: str) -> dict:
  fields = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
                max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                rope_parameters=rope_to_hf(cfg.rope), tie_word_embeddings=cfg.tie_embeddings,
                initializer_range=cfg.initializer_range, dtype=dtype)
  if cfg.rope.scaling == "dynamic_ntk":
    # HF's dynamic NTK scales relative to max_position_embeddings (our original_max_position).
    fields["max_position_embeddings"] = cfg.rope.original_max_position
  for key in _TOKEN_KEYS:
    fields[key] = (source or {}).get(key)
  return fields


def build_config(cfg: ModelConfig, target: str, source: Mapping[str, Any] | None, dtype: str):
  """The transformers config object of ``target`` (resolved) for ``cfg``."""
  fields = _common_fields(cfg, source, dtype)
  layers = [s.to_dict() for s in cfg.layers]
  if target == "llama":
    from transformers import LlamaConfig
    out = LlamaConfig(attention_bias=False, mlp_bias=False, **fields)
  elif target == "stock_sliding":
    from transformers import MinistralConfig
    out = MinistralConfig(
        sliding_window=sliding_window(cfg), longgen_layers=layers,
        layer_types=["full_attention" if s.is_full else "sliding_attention" for s in cfg.layers],
        **fields)
  elif target == "longgen":
    from longgen_jax.hf.configuration_longgen import LongGenConfig
    out = LongGenConfig(attention_bias=False, mlp_bias=False, longgen_layers=layers, **fields)
    out.auto_map = dict(AUTO_MAP)
  else:
    raise HFConversionError(f"unresolved export target {target!r}")
  out.architectures = [ARCHITECTURES[target]]
  return out
