"""RoPE settings survive HF -> ours -> HF, and give transformers' inverse frequencies."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longgen_jax.hf.hf_config import model_config_from_hf  # noqa: E402
from longgen_jax.hf.rope_map import rope_from_hf, rope_to_hf  # noqa: E402
from longgen_jax.hf.targets import build_config  # noqa: E402
from longgen_jax.model.rope import model_inv_frequencies  # noqa: E402

HF_ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
}


def _hf_inv_freq(config):
  emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
  return emb.inv_freq.numpy(), float(emb.attention_scaling)


@pytest.mark.parametrize("kind", sorted(HF_ROPES))
def test_rope_import_export(kind):
  hf = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=4,
                                max_position_embeddings=256, rope_parameters=HF_ROPES[kind])
  cfg = model_config_from_hf(hf.to_dict())
  inv, att = model_inv_frequencies(cfg)
  hf_inv, hf_att = _hf_inv_freq(hf)
  np.testing.assert_allclose(inv, hf_inv, rtol=1e-6)
  assert att == pytest.approx(hf_att, rel=1e-6)
  assert rope_from_hf({"rope_parameters": rope_to_hf(cfg.rope),
                       "max_position_embeddings": cfg.max_seq_len}) == cfg.rope
  exported = build_config(cfg, "llama", None, "float32")
  np.testing.assert_allclose(_hf_inv_freq(exported)[0], hf_inv, rtol=1e-6)
  assert model_config_from_hf(exported.to_dict()).rope == cfg.rope


def test_legacy_rope_scaling_fields():
  legacy = {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
  rope = rope_from_hf(legacy)
  assert (rope.scaling, rope.factor, rope.theta) == ("linear", 2.0, 500000.0)
