"""Cached inference == the model's full forward pass, for every layer pattern.

Rows of different lengths (100 and 61 tokens, RIGHT-padded) are prefilled in chunks of 64 (two
chunks), one-shot (one chunk of 128) and decoded token by token (teacher forcing) up to position
127: four times the 32-token window and eight strided blocks. Every next-token logit must equal
the logits of ``Llama.__call__`` over the whole sequence.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longgen_jax.infer.engine import Engine
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import to_canonical

SINK, FULL, STRIDED = "sink_window:4:32@16", "full@16", "strided:2:4@16"
PATTERNS = {
    "full": ((FULL,), None),
    "sink_window": ((SINK,), None),
    "strided": ((STRIDED,), None),
    "hybrid": ((SINK, FULL, STRIDED), None),
    "chunked": (("chunked:32@16",), None),   # the fourth pattern: a ring of one 32-token chunk
    "kv_drop": ((FULL,), SINK),          # a full model served with a sink + window cache
}
LENS = (100, 61)
T = 128
ATOL = 2e-5


def config(layers) -> ModelConfig:
  return ModelConfig(vocab_size=64, d_model=32, n_layers=len(layers), n_heads=4, n_kv_heads=2,
                     ffn_dim=64, max_seq_len=T, dtype="float32", param_dtype="float32",
                     scan_layers=False, layers=tuple(layers))


@functools.lru_cache(maxsize=None)
def setup(name):
  """(cfg, params, reference logits [2, T, V]) of a pattern; kv_drop's reference is the model
  whose layers ARE the dropped pattern (same weights: init does not depend on the spec)."""
  layers, drop = PATTERNS[name]
  cfg = config(layers)
  params = to_canonical(Llama(cfg, rngs=nnx.Rngs(0)))
  ref_cfg = config([drop if drop else s for s in layers])
  ref_model = Llama(ref_cfg, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(0).integers(0, 64, (2, T)).astype(np.int32)
  ref = np.asarray(jax.jit(lambda t: ref_model(t))(jnp.asarray(tokens)))
  return cfg, params, tokens, ref


def prompts(tokens):
  return [tokens[b, :n].tolist() for b, n in enumerate(LENS)]


def check_decode(engine, cache, tokens, ref, steps):
  lengths = np.array(LENS)
  for _ in range(steps):
    _, logits, cache = engine.decode(cache, tokens[np.arange(2), lengths], lengths=lengths)
    logits = np.asarray(logits)
    for b in range(2):
      np.testing.assert_allclose(logits[b], ref[b, lengths[b]], atol=ATOL, rtol=ATOL)
    lengths = lengths + 1
  return cache


@pytest.mark.parametrize("name", list(PATTERNS))
def test_chunked_prefill_and_decode_match_full_forward(name):
  cfg, params, tokens, ref = setup(name)
  engine = Engine(cfg, params, kv_drop=PATTERNS[name][1], prefill_chunk=64, min_prompt_bucket=16)
  logits, cache = engine.prefill(prompts(tokens), max_new_tokens=T - LENS[0])
  assert cache.capacity == T
  for b, n in enumerate(LENS):
    np.testing.assert_allclose(np.asarray(logits)[b], ref[b, n - 1], atol=ATOL, rtol=ATOL)
  np.testing.assert_array_equal(np.asarray(cache.lengths), LENS)
  check_decode(engine, cache, tokens, ref, T - LENS[0])


@pytest.mark.parametrize("name", ["hybrid", "kv_drop"])
def test_one_shot_prefill_equals_chunked_and_full_forward(name):
  cfg, params, tokens, ref = setup(name)
  chunked = Engine(cfg, params, kv_drop=PATTERNS[name][1], prefill_chunk=64)
  one_shot = Engine(cfg, params, kv_drop=PATTERNS[name][1], prefill_chunk=128)
  assert one_shot.plan(LENS, T - LENS[0])[:2] == (128, 128)
  la, ca = chunked.prefill(prompts(tokens), max_new_tokens=T - LENS[0])
  lb, cb = one_shot.prefill(prompts(tokens), max_new_tokens=T - LENS[0])
  np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=ATOL)
  for b, n in enumerate(LENS):
    np.testing.assert_allclose(np.asarray(lb)[b], ref[b, n - 1], atol=ATOL, rtol=ATOL)
  check_decode(one_shot, cb, tokens, ref, 4)     # the one-shot cache decodes correctly too


def test_paged_full_layers_match_full_forward():
  cfg, params, tokens, ref = setup("hybrid")
  engine = Engine(cfg, params, prefill_chunk=64, paged=True, page_size=16)
  logits, cache = engine.prefill(prompts(tokens), max_new_tokens=T - LENS[0])
  for b, n in enumerate(LENS):
    np.testing.assert_allclose(np.asarray(logits)[b], ref[b, n - 1], atol=ATOL, rtol=ATOL)
  used = engine.allocator.num_pages - 1 - engine.allocator.free_pages
  assert used == sum(-(-n // 16) for n in LENS)             # pages on demand, not capacity
  check_decode(engine, cache, tokens, ref, T - LENS[0])


def test_score_equals_full_forward_log_probs():
  cfg, params, tokens, ref = setup("hybrid")
  engine = Engine(cfg, params, prefill_chunk=64)
  lp = engine.score(tokens[0, :97].tolist())
  ref_lp = jax.nn.log_softmax(jnp.asarray(ref[0, :96]), axis=-1)
  want = np.take_along_axis(np.asarray(ref_lp), tokens[0, 1:97, None], axis=-1)[:, 0]
  np.testing.assert_allclose(lp, want, atol=1e-4)


def test_chunk_attention_shapes_are_the_forwards_call(monkeypatch):
  """``forward.chunk_attention_shapes`` (what ``benchmarks/serving.py`` gives ``select_backend``
  to record each prefill's backend) is what ``prefill_chunk`` really passes the attention entry
  point, for the first chunk and a later one."""
  import pallas_kernels  # pylint: disable=g-import-not-at-top
  from longgen_jax.infer.forward import chunk_attention_shapes  # pylint: disable=g-import-not-at-top
  cfg, params, tokens, _ = setup("hybrid")
  seen, real = set(), pallas_kernels.attention

  def spy(q, k, v, spec, **kw):
    seen.add((q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3],
              kw["q_offset"], kw["kv_offset"], kw.get("segment_ids") is not None))
    return real(q, k, v, spec, **kw)

  monkeypatch.setattr(pallas_kernels, "attention", spy)
  jax.clear_caches()   # earlier tests' compiled prefill would not trace the spy
  try:
    engine = Engine(cfg, params, prefill_chunk=64, min_prompt_bucket=16)
    engine.prefill(prompts(tokens), max_new_tokens=T - LENS[0])
  finally:
    jax.clear_caches()
  want = {tuple(chunk_attention_shapes(cfg, 2, 64, first=f)) for f in (True, False)}
  assert seen == want, (seen, want)
