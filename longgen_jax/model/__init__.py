"""LongGen model: a Flax NNX Llama with one static attention pattern per layer.

See ``docs/model.md``. Public surface:

  ModelConfig, RopeConfig, ConfigError               config.py / errors.py
  longgen_layout, describe_layout, resolve_layers    layout.py
  Llama                                              llama.py (NNX)
  AttentionFn, SINGLE_DEVICE                         attention_fn.py (the attention call the
                                                     caller hands the model)
  rms_norm, attention_qkv, attention_out, mlp,       layers.py (pure functions over canonical
  decoder_layer, spec_attend, ...                    per-layer params: one implementation)
  inv_frequencies, rope_cos_sin, apply_rope          rope.py
  to_canonical, from_canonical, load_canonical,      params.py
  abstract_model, param_count
  flops_per_token, mfu                               flops.py
  param_axes, LAYER_PARAM_AXES                       axes.py (logical axis names)
  llama2_7b, llama2_70b, llama3_8b, tiny             presets.py
"""

from longgen_jax.model.errors import ConfigError
from longgen_jax.model.config import ModelConfig, RopeConfig
from longgen_jax.model.attention_fn import SINGLE_DEVICE, AttentionFn
from longgen_jax.model.layout import (compact_layout, describe_layout, longgen_layout,
                                      resolve_layers)
from longgen_jax.model.layers import (LAYER_PARAM_NAMES, attention_out, attention_qkv,
                                      attention_scale, decoder_layer, embed_tokens, final_hidden,
                                      logits_from_hidden, mlp, rms_norm, spec_attend)
from longgen_jax.model.rope import (apply_rope, cos_sin, inv_frequencies, model_inv_frequencies,
                                    rope_cos_sin)
from longgen_jax.model.scan_plan import Segment, plan_segments
from longgen_jax.model.llama import DecoderLayer, LayerStack, Llama
from longgen_jax.model.params import (abstract_model, canonical_shapes, check_canonical,
                                      from_canonical, load_canonical, param_count, to_canonical)
from longgen_jax.model.axes import GLOBAL_PARAM_AXES, LAYER_PARAM_AXES, param_axes
from longgen_jax.model.flops import FlopCount, flops_per_token, matmul_params, mfu
from longgen_jax.model.presets import PRESETS, llama2_70b, llama2_7b, llama3_8b, tiny

__all__ = [
    "ConfigError", "ModelConfig", "RopeConfig", "AttentionFn", "SINGLE_DEVICE", "compact_layout",
    "describe_layout", "longgen_layout", "resolve_layers", "LAYER_PARAM_NAMES", "attention_out",
    "attention_qkv",
    "attention_scale", "decoder_layer", "embed_tokens", "final_hidden", "logits_from_hidden",
    "mlp", "rms_norm", "spec_attend", "apply_rope", "cos_sin", "inv_frequencies",
    "model_inv_frequencies", "rope_cos_sin", "Segment", "plan_segments", "DecoderLayer",
    "LayerStack", "Llama", "abstract_model", "canonical_shapes", "check_canonical",
    "from_canonical", "load_canonical", "param_count", "to_canonical", "FlopCount",
    "flops_per_token", "matmul_params", "mfu", "PRESETS", "llama2_70b", "llama2_7b",
    "llama3_8b", "tiny", "GLOBAL_PARAM_AXES", "LAYER_PARAM_AXES", "param_axes",
]
