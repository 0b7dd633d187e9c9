"""Named model configs. Each takes ``**overrides`` in ``ModelConfig.from_dict`` form, e.g.
``llama2_7b(layout="longgen", sparse="sink_window:64:4096", max_seq_len=131072)``; without
layout keys the preset is all-full attention (the pretrained model)."""

from __future__ import annotations

from typing import Any

from longgen_jax.model.config import ModelConfig


_LAYOUT = ("layout", "sparse", "full", "n_full", "full_layers", "layers")


def _build(base: dict[str, Any], overrides: dict[str, Any]) -> ModelConfig:
  """``base`` updated by ``overrides``; a layout in ``overrides`` replaces the base layout."""
  if any(k in overrides for k in _LAYOUT):
    base = {k: v for k, v in base.items() if k not in _LAYOUT}
  return ModelConfig.from_dict({**base, **overrides})


def llama2_7b(**overrides: Any) -> ModelConfig:
  """Llama-2 7B: d 4096, 32 layers, 32 heads (MHA), ffn 11008, vocab 32000, 4K context."""
  return _build(dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                     ffn_dim=11008, norm_eps=1e-5, max_seq_len=4096,
                     rope={"theta": 10000.0}), overrides)


def llama2_70b(**overrides: Any) -> ModelConfig:
  """Llama-2 70B: d 8192, 80 layers, 64 heads, 8 KV heads, ffn 28672, vocab 32000."""
  return _build(dict(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                     ffn_dim=28672, norm_eps=1e-5, max_seq_len=4096,
                     rope={"theta": 10000.0}), overrides)


def llama3_8b(**overrides: Any) -> ModelConfig:
  """Llama-3 8B: d 4096, 32 layers, 32/8 heads, ffn 14336, vocab 128256, theta 5e5, 8K.

  Llama-3.1 adds ``rope={"theta": 500000.0, "scaling": "llama3", "factor": 8.0,
  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position": 8192}``.
  """
  return _build(dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                     ffn_dim=14336, norm_eps=1e-5, max_seq_len=8192,
                     rope={"theta": 500000.0}), overrides)


def tiny(**overrides: Any) -> ModelConfig:
  """A 6-layer LongGen toy for tests and smoke runs (S×2 F×2 S×2, sink 4 + window 32, block 16)."""
  return _build(dict(vocab_size=128, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2,
                     ffn_dim=64, norm_eps=1e-5, max_seq_len=128, dtype="float32",
                     layout="longgen", sparse="sink_window:4:32@16", full="full@16"), overrides)


PRESETS = {"llama2_7b": llama2_7b, "llama2_70b": llama2_70b, "llama3_8b": llama3_8b,
           "tiny": tiny}
