"""Tiny random Hugging Face Llama directories, built locally (no hub access): tests, notebooks.

``save_tiny_llama(path, style)`` writes what ``LlamaForCausalLM.save_pretrained`` writes (config,
safetensors, generation config) plus a small byte-level BPE tokenizer trained on a built-in text:

  llama2  MHA, default RoPE (theta 1e4), untied embeddings
  llama3  GQA (4 query / 2 KV heads), RoPE scaling ``llama3`` (theta 5e5), tied embeddings
"""

from __future__ import annotations

import os

TINY_TEXT = (
    "LongGen keeps full attention in a middle block of layers and sparse attention elsewhere. "
    "Sparse layers see a few sink tokens and a local window, or every few blocks of the past. "
    "The cache of a sparse layer keeps only what the layer can still see, so memory stays flat. "
    "Long context extension trains the sparse layers and the full layers together. "
) * 4


def save_tiny_tokenizer(path: str, vocab_size: int = 300) -> None:
  """A byte-level BPE tokenizer (``tokenizer.json`` + config) with <s>, </s>, <pad>."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE(unk_token=None))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([TINY_TEXT], trainer=trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>")
  fast.save_pretrained(path)


def tiny_llama_config(style: str = "llama2", *, vocab_size: int = 300, hidden_size: int = 64,
                      n_layers: int = 4, max_positions: int = 256):
  """A ``LlamaConfig`` of the given style (see module docstring)."""
  from transformers import LlamaConfig
  common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=n_layers, max_position_embeddings=max_positions,
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  if style == "llama2":
    return LlamaConfig(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common)
  if style == "llama3":
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return LlamaConfig(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                       rope_parameters=rope, **common)
  raise ValueError(f"unknown tiny llama style {style!r}; use llama2 or llama3")


def save_tiny_llama(path: str, style: str = "llama2", *, seed: int = 0, dtype: str = "float32",
                    tokenizer: bool = True, **config_kwargs):
  """Random-init ``LlamaForCausalLM`` saved with ``save_pretrained``; returns the torch model."""
  import torch
  from transformers import LlamaForCausalLM
  torch.manual_seed(seed)
  model = LlamaForCausalLM(tiny_llama_config(style, **config_kwargs)).eval()
  if dtype != "float32":
    model = model.to(getattr(torch, dtype))
  os.makedirs(path, exist_ok=True)
  model.save_pretrained(path)
  if tokenizer:
    save_tiny_tokenizer(path, vocab_size=model.config.vocab_size)
  return model
