"""Sampling, generation bookkeeping, cache bounds during generation, bad requests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longgen_jax.infer import forward, slots
from longgen_jax.infer.engine import Engine
from longgen_jax.infer.errors import InferError
from longgen_jax.infer.sampling import SamplingParams, filter_logits, sample
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import to_canonical
from pallas_kernels.spec import as_spec

SINK, FULL, STRIDED = "sink_window:4:32@16", "full@16", "strided:2:4@16"


@functools.lru_cache(maxsize=None)
def model(layers):
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=len(layers), n_heads=4, n_kv_heads=2,
                    ffn_dim=64, max_seq_len=128, dtype="float32", param_dtype="float32",
                    scan_layers=False, layers=layers)
  return cfg, to_canonical(Llama(cfg, rngs=nnx.Rngs(1)))


# ----------------------------------------------------------------------------- sampling
def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = np.isfinite(np.asarray(filter_logits(logits, SamplingParams(1.0, top_k=2))))
  assert kept.tolist() == [[True, True, False, False, False]]
  kept = np.isfinite(np.asarray(filter_logits(logits, SamplingParams(1.0, top_p=0.8))))
  assert kept.tolist() == [[True, True, True, False, False]]      # 0.5+0.2 < 0.8 <= 0.85
  kept = np.isfinite(np.asarray(filter_logits(logits, SamplingParams(1.0, top_p=0.1))))
  assert kept.tolist() == [[True, False, False, False, False]]    # the best token always stays


def test_sampling_respects_filters_and_greedy_is_argmax():
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((4, 50)), jnp.float32)
  greedy = sample(logits, jax.random.PRNGKey(0), SamplingParams())
  np.testing.assert_array_equal(np.asarray(greedy), np.argmax(np.asarray(logits), -1))
  top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
  for seed in range(20):
    got = np.asarray(sample(logits, jax.random.PRNGKey(seed), SamplingParams(1.5, top_k=3)))
    assert all(g in row for g, row in zip(got, top3))
  with pytest.raises(InferError, match="top_p"):
    SamplingParams(1.0, top_p=0.0)
  with pytest.raises(InferError, match="temperature"):
    SamplingParams(-1.0)


# ----------------------------------------------------------------------------- generation
def test_generate_batch_stop_tokens_and_streaming():
  cfg, params = model((SINK, FULL, STRIDED))
  engine = Engine(cfg, params, prefill_chunk=64)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 64, 50).tolist(), rng.integers(0, 64, 9).tolist()]
  free = engine.generate(prompts, max_new_tokens=12)
  assert [len(t) for t in free.tokens] == [12, 12] and free.finish_reasons == ["length"] * 2
  # Greedy generation == teacher-forced greedy decoding of the same tokens.
  logits, cache = engine.prefill(prompts, max_new_tokens=12)
  tok = np.argmax(np.asarray(logits), -1)
  lengths = np.array([50, 9])
  for i in range(11):
    np.testing.assert_array_equal(tok, [free.tokens[0][i], free.tokens[1][i]])
    _, logits, cache = engine.decode(cache, tok, lengths=lengths)
    tok, lengths = np.argmax(np.asarray(logits), -1), lengths + 1
  # A stop token ends its row (not emitted); the other row goes on; on_token streams.
  stop = free.tokens[0][3]
  seen = [[], []]

  def on_token(step, tokens, emitted, active):
    for b in range(2):
      if emitted[b]:
        seen[b].append(int(tokens[b]))

  res = engine.generate(prompts, max_new_tokens=12, stop_tokens=[stop], on_token=on_token)
  cut = free.tokens[0].index(stop)
  assert res.tokens[0] == free.tokens[0][:cut] and res.finish_reasons[0] == "stop"
  assert seen == res.tokens
  res = engine.generate(prompts, max_new_tokens=12,
                        should_stop=lambda row, ids: row == 1 and len(ids) == 5)
  assert len(res.tokens[1]) == 5 and res.finish_reasons == ["length", "stop"]


def test_sparse_caches_stay_bounded_over_10x_window_of_generation():
  cfg, params = model((SINK, STRIDED))
  engine = Engine(cfg, params, prefill_chunk=64, min_prompt_bucket=16)
  n_new = 10 * 32
  res = engine.generate([list(range(1, 21))], max_new_tokens=n_new, return_cache=True)
  assert len(res.tokens[0]) == n_new and res.decode_steps == n_new - 1
  end = 20 + n_new - 1                          # positions cached: 0 .. end - 1
  for lc in res.cache.layers:
    assert lc.k.shape[2] == slots.n_slots(lc.spec, res.capacity)
    assert lc.k.shape[2] <= -(-lc.spec.kv_budget(res.capacity) // 16) * 16
    pos = np.asarray(lc.pos)[0]
    held = set(pos[pos >= 0].tolist())
    assert {j for j in range(end) if lc.spec.allowed(end - 1, j)} <= held
  assert res.cache.layers[0].k.shape[2] == 4 + 32


# ----------------------------------------------------------------------------- bad requests
def test_bad_requests_raise_clear_errors():
  cfg, params = model((SINK, FULL, STRIDED))
  engine = Engine(cfg, params, prefill_chunk=64, max_capacity=256)
  with pytest.raises(InferError, match="limited to 256"):
    engine.plan([300], 0)
  with pytest.raises(InferError, match="cache holds 128"):
    engine.plan([100], 40, capacity=128)
  with pytest.raises(InferError, match="prompt 1 is empty"):
    engine.plan([5, 0], 4)
  with pytest.raises(InferError, match="no prompts"):
    engine.generate([], max_new_tokens=1)
  with pytest.raises(InferError, match="sparse pattern"):
    Engine(cfg, params, kv_drop="full")
  with pytest.raises(InferError, match="contradict"):
    Engine(cfg, params, kv_drop=SINK, serve_full=True)
  with pytest.raises(InferError, match="multiple of 64"):
    Engine(cfg, params, prefill_chunk=48)


def test_serve_full_serves_every_layer_with_the_models_full_spec():
  cfg, params = model((SINK, FULL, STRIDED))
  assert Engine(cfg, params, serve_full=True, prefill_chunk=64).specs == (as_spec(FULL),) * 3
  sparse_only, _ = model((SINK, "strided:2:4@32"))   # no full layer: full at the largest block
  assert forward.serving_specs(sparse_only, serve_full=True) == (as_spec("full@32"),) * 2
