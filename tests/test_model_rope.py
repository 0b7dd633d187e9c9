"""RoPE: inverse frequencies and cos/sin against Hugging Face transformers; rotation properties."""

from __future__ import annotations

import numpy as np
import pytest

import jax.numpy as jnp

from longgen_jax.model import RopeConfig, apply_rope, cos_sin, inv_frequencies, tiny
from longgen_jax.model.rope import model_inv_frequencies

HEAD_DIM = 64

# (HF rope_parameters, our RopeConfig, HF max_position_embeddings, seq_len for the init fn)
CASES = {
    "none": ({"rope_type": "default", "rope_theta": 10000.0}, RopeConfig(), 4096, None),
    "linear": ({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
               RopeConfig(scaling="linear", factor=4.0), 4096, None),
    "dynamic_ntk": ({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
                    RopeConfig(scaling="dynamic_ntk", factor=4.0, original_max_position=4096),
                    4096, 32768),
    "yarn": ({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
              "original_max_position_embeddings": 4096},
             RopeConfig(scaling="yarn", factor=8.0, original_max_position=4096), 32768, None),
    "yarn_mscale": ({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                     "original_max_position_embeddings": 4096, "mscale": 1.0,
                     "mscale_all_dim": 0.5, "beta_fast": 16.0, "beta_slow": 2.0},
                    RopeConfig(scaling="yarn", factor=8.0, original_max_position=4096,
                               mscale=1.0, mscale_all_dim=0.5, beta_fast=16.0, beta_slow=2.0),
                    32768, None),
    "yarn_attention_factor": ({"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                               "original_max_position_embeddings": 8192,
                               "attention_factor": 1.3, "truncate": False},
                              RopeConfig(theta=500000.0, scaling="yarn", factor=4.0,
                                         original_max_position=8192, attention_factor=1.3,
                                         truncate=False), 32768, None),
    "llama3": ({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192},
               RopeConfig(theta=500000.0, scaling="llama3", factor=8.0,
                          original_max_position=8192), 131072, None),
}


def _hf_config(rope_parameters, max_pos):
  transformers = pytest.importorskip("transformers")
  return transformers.LlamaConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4,
                                  head_dim=HEAD_DIM, max_position_embeddings=max_pos,
                                  rope_parameters=dict(rope_parameters))


@pytest.mark.parametrize("name", list(CASES))
def test_inv_freq_matches_transformers(name):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
  hf_params, ours, max_pos, seq_len = CASES[name]
  config = _hf_config(hf_params, max_pos)
  if hf_params["rope_type"] == "default":
    ref, ref_att = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
  else:
    ref, ref_att = ROPE_INIT_FUNCTIONS[hf_params["rope_type"]](config, None, seq_len=seq_len)
  inv, att = inv_frequencies(ours, HEAD_DIM, seq_len)
  assert inv.dtype == np.float32 and inv.shape == (HEAD_DIM // 2,)
  np.testing.assert_allclose(inv, ref.numpy(), rtol=1e-6, atol=0)
  assert att == pytest.approx(float(ref_att), rel=1e-12)


@pytest.mark.parametrize("name", ["none", "yarn", "llama3"])
def test_cos_sin_match_transformers_at_packed_positions(name):
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
  hf_params, ours, max_pos, _ = CASES[name]
  emb = LlamaRotaryEmbedding(_hf_config(hf_params, max_pos))
  inv, att = inv_frequencies(ours, HEAD_DIM)
  # inv_freq may differ from HF's float32 pow by 1 ulp, which moves fp32 angles at position p by
  # up to p * 1.2e-7 rad; give HF our table to compare the cos/sin layout and scaling exactly.
  emb.inv_freq.copy_(torch.from_numpy(inv))
  # Two packed documents per row: positions restart at the boundary.
  pos = np.stack([np.concatenate([np.arange(700), np.arange(324)]),
                  np.arange(1024) + 30000]).astype(np.int32)
  x = torch.zeros(2, 1024, HEAD_DIM)
  ref_cos, ref_sin = emb(x, torch.from_numpy(pos).long())
  c, s = cos_sin(jnp.asarray(pos), inv, att)
  np.testing.assert_allclose(np.asarray(c), ref_cos.numpy(), atol=2e-6)
  np.testing.assert_allclose(np.asarray(s), ref_sin.numpy(), atol=2e-6)
  # apply_rope == HF apply_rotary_pos_emb (q, k in HF layout [B, H, T, Dh]).
  rng = np.random.default_rng(0)
  q = rng.standard_normal((2, 1024, 3, HEAD_DIM)).astype(np.float32)
  hq, _ = apply_rotary_pos_emb(torch.from_numpy(q).transpose(1, 2),
                               torch.from_numpy(q).transpose(1, 2), ref_cos, ref_sin)
  np.testing.assert_allclose(np.asarray(apply_rope(jnp.asarray(q), c, s)),
                             hq.transpose(1, 2).numpy(), atol=1e-5)


def test_rotation_is_relative_and_norm_preserving():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  inv, _ = inv_frequencies(RopeConfig(), 16)

  def score(i, j):
    ci, si = cos_sin(jnp.array([[i]]), inv)
    cj, sj = cos_sin(jnp.array([[j]]), inv)
    return float(jnp.sum(apply_rope(q, ci, si) * apply_rope(k, cj, sj)))

  assert score(5, 2) == pytest.approx(score(105, 102), abs=1e-4)
  assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
  c, s = cos_sin(jnp.array([[77]]), inv)
  assert float(jnp.linalg.norm(apply_rope(q, c, s))) == pytest.approx(
      float(jnp.linalg.norm(q)), rel=1e-5)
  # bf16 input keeps its dtype.
  assert apply_rope(q.astype(jnp.bfloat16), c, s).dtype == jnp.bfloat16


def test_dynamic_ntk_is_static_at_max_seq_len():
  short = tiny(rope={"scaling": "dynamic_ntk", "factor": 4.0, "original_max_position": 128})
  inv_short, _ = model_inv_frequencies(short)
  np.testing.assert_array_equal(inv_short, inv_frequencies(RopeConfig(), short.head_dim)[0])
  long = tiny(max_seq_len=512,
              rope={"scaling": "dynamic_ntk", "factor": 4.0, "original_max_position": 128})
  inv_long, _ = model_inv_frequencies(long)
  np.testing.assert_array_equal(inv_long, inv_frequencies(long.rope, long.head_dim, 512)[0])
  assert inv_long[-1] < inv_short[-1]  # larger base -> lower frequencies
  assert inv_long[0] == inv_short[0] == 1.0
