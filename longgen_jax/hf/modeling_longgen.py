"""LongGen hybrid Llama for transformers (``trust_remote_code=True``), shipped into hybrid exports.

Weights are named exactly like ``LlamaForCausalLM``. Each layer applies its own static pattern
(``config.longgen_layers``: full, sink + window, or block-strided) as a mask built from absolute
query / key positions, and its cache layer (``LongGenCache``) keeps only the keys that layer can
still see. Attention runs through transformers' ``eager`` or ``sdpa`` functions with that mask
(FlashAttention / flex are not wired: they would need the same pattern as a kernel argument).

Padding: a 2D ``attention_mask`` ([B, past + T] as ``generate`` passes it, or [B, T]) marks
padding keys; positions come from ``position_ids`` (``generate`` derives them from the mask).
"""

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb, eager_attention_forward)

from .cache_longgen import LongGenCache, pattern_allows
from .configuration_longgen import LongGenConfig

SUPPORTED_ATTN = ("eager", "sdpa")
# transformers 5 renamed ``past_key_values`` to ``cache`` (outputs and generate's model kwargs).
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def additive_mask(spec: dict, qpos, kpos, kvalid, dtype) -> torch.Tensor:
  """[B, 1, Tq, Tk] additive mask: 0 where the pattern allows and the key is not padding."""
  allowed = pattern_allows(spec, qpos[:, :, None], kpos[:, None, :]) & kvalid[:, None, :]
  zero = torch.zeros((), dtype=dtype, device=allowed.device)
  return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


class LongGenAttention(nn.Module):
  """Llama attention (GQA, RoPE) restricted to this layer's static pattern."""

  def __init__(self, config: LongGenConfig, layer_idx: int):
    super().__init__()
    self.config = config
    self.layer_idx = layer_idx
    self.spec = config.longgen_layers[layer_idx]
    self.head_dim = (getattr(config, "head_dim", None)
                     or config.hidden_size // config.num_attention_heads)
    self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
    self.scaling = self.head_dim ** -0.5
    self.is_causal = True
    bias, d = config.attention_bias, config.hidden_size
    q_dim = config.num_attention_heads * self.head_dim
    kv_dim = config.num_key_value_heads * self.head_dim
    self.q_proj = nn.Linear(d, q_dim, bias=bias)
    self.k_proj = nn.Linear(d, kv_dim, bias=bias)
    self.v_proj = nn.Linear(d, kv_dim, bias=bias)
    self.o_proj = nn.Linear(q_dim, d, bias=bias)

  def forward(self, hidden_states, position_embeddings, positions, valid, cache=None, **kwargs):
    b, t, _ = hidden_states.shape
    shape = (b, t, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
    k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
    v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if cache is not None:
      k, v, kpos, kvalid = cache.append(self.layer_idx, k, v, positions, valid)
    else:
      kpos, kvalid = positions, valid
    mask = additive_mask(self.spec, positions, kpos, kvalid, q.dtype)
    impl = self.config._attn_implementation or "eager"
    if impl not in SUPPORTED_ATTN:
      raise ValueError(f"LongGen layers support attn_implementation {SUPPORTED_ATTN}, got {impl!r}")
    attn = eager_attention_forward if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
    out, weights = attn(self, q, k, v, mask, dropout=0.0, scaling=self.scaling)
    return self.o_proj(out.reshape(b, t, -1).contiguous()), weights


class LongGenDecoderLayer(nn.Module):
  """Pre-norm residual block: attention then SwiGLU MLP."""

  def __init__(self, config: LongGenConfig, layer_idx: int):
    super().__init__()
    self.self_attn = LongGenAttention(config, layer_idx)
    self.mlp = LlamaMLP(config)
    self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

  def forward(self, hidden_states, position_embeddings, positions, valid, cache=None):
    attn, _ = self.self_attn(self.input_layernorm(hidden_states), position_embeddings, positions,
                             valid, cache)
    hidden_states = hidden_states + attn
    return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class LongGenPreTrainedModel(PreTrainedModel):
  config_class = LongGenConfig
  config: LongGenConfig
  base_model_prefix = "model"
  _no_split_modules = ["LongGenDecoderLayer"]
  _supports_sdpa = True
  _supports_flash_attn = False
  _supports_flex_attn = False


class LongGenModel(LongGenPreTrainedModel):
  """Embeddings, decoder layers with per-layer patterns, final norm."""

  def __init__(self, config: LongGenConfig):
    super().__init__(config)
    self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
    self.layers = nn.ModuleList([LongGenDecoderLayer(config, i)
                                 for i in range(config.num_hidden_layers)])
    self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    self.rotary_emb = LlamaRotaryEmbedding(config=config)
    self.post_init()

  def get_input_embeddings(self):
    return self.embed_tokens

  def set_input_embeddings(self, value):
    self.embed_tokens = value

  def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
              inputs_embeds=None, use_cache=None, past_key_values=None, **kwargs):
    cache = cache if cache is not None else past_key_values
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
      inputs_embeds = self.embed_tokens(input_ids)
    b, t = inputs_embeds.shape[:2]
    use_cache = self.config.use_cache if use_cache is None else use_cache
    if use_cache and cache is None:
      cache = LongGenCache(self.config)
    if cache is not None and not isinstance(cache, LongGenCache):
      raise TypeError(f"LongGen models need a LongGenCache (per-layer eviction), got "
                      f"{type(cache).__name__}")
    device = inputs_embeds.device
    if position_ids is None:
      past = cache.get_seq_length() if cache is not None else 0
      position_ids = torch.arange(past, past + t, device=device)[None].expand(b, t)
    positions = position_ids.to(device).long().expand(b, t)
    if attention_mask is None:
      valid = torch.ones((b, t), dtype=torch.bool, device=device)
    elif attention_mask.dim() == 2:
      valid = attention_mask[:, -t:].to(device).bool()
    else:
      raise ValueError(f"LongGen models take a 2D padding attention_mask, got "
                       f"{attention_mask.dim()}D")
    position_embeddings = self.rotary_emb(inputs_embeds, position_ids=positions)
    hidden_states = inputs_embeds
    for layer in self.layers:
      hidden_states = layer(hidden_states, position_embeddings, positions, valid, cache)
    hidden_states = self.norm(hidden_states)
    return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_KEY: cache})


class LongGenForCausalLM(LongGenPreTrainedModel, GenerationMixin):
  """Causal LM head on LongGenModel; ``generate`` uses LongGenCache by default."""

  _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

  def __init__(self, config: LongGenConfig):
    super().__init__(config)
    self.model = LongGenModel(config)
    self.vocab_size = config.vocab_size
    self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    self.post_init()

  def get_input_embeddings(self):
    return self.model.embed_tokens

  def set_input_embeddings(self, value):
    self.model.embed_tokens = value

  def get_output_embeddings(self):
    return self.lm_head

  def set_output_embeddings(self, value):
    self.lm_head = value

  def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
    """Uses LongGenCache unless the caller passed one; other cache implementations are refused."""
    if model_kwargs.get(CACHE_KEY) is not None or generation_config.use_cache is False:
      return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
    impl = generation_config.cache_implementation
    if impl not in (None, "dynamic"):
      raise ValueError(f"LongGen models use their own LongGenCache; cache_implementation={impl!r} "
                       "is not supported")
    model_kwargs[CACHE_KEY] = LongGenCache(self.config.get_text_config(decoder=True))

  def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
              inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
              past_key_values=None, **kwargs):
    out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     cache=cache if cache is not None else past_key_values,
                     inputs_embeds=inputs_embeds, use_cache=use_cache)
    hidden = out.last_hidden_state
    cache = getattr(out, CACHE_KEY)
    if isinstance(logits_to_keep, int) and logits_to_keep > 0:
      hidden = hidden[:, -logits_to_keep:]
    elif isinstance(logits_to_keep, torch.Tensor):
      hidden = hidden[:, logits_to_keep]
    logits = self.lm_head(hidden)
    loss = None
    if labels is not None:
      loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                **kwargs)
    return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_KEY: cache})


__all__ = ["LongGenForCausalLM", "LongGenModel", "LongGenPreTrainedModel"]
