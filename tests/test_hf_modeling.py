"""The remote-code model shipped in hybrid exports (torch only: masks, cache eviction, parity)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pallas_kernels.spec import AttentionSpec  # noqa: E402

from longgen_jax.hf.cache_longgen import LongGenCache, pattern_allows, still_needed  # noqa: E402
from longgen_jax.hf.configuration_longgen import LongGenConfig  # noqa: E402
from longgen_jax.hf.modeling_longgen import LongGenForCausalLM  # noqa: E402
from longgen_jax.hf.parity import generated_cache  # noqa: E402
from longgen_jax.hf.tiny import tiny_llama_config  # noqa: E402

SPECS = [AttentionSpec.full(16), AttentionSpec.sink_window(4, 32, 16),
         AttentionSpec.sink_window(0, 16, 16), AttentionSpec.strided(2, 3, 16),
         AttentionSpec.strided(1, 2, 16), AttentionSpec.chunked(32, 16),
         AttentionSpec.chunked(16, 16)]


def test_torch_mirror_covers_every_registered_kind():
  """The standalone remote-code files spell each kind again (torch only): they must list exactly
  the registered kinds, and SPECS (checked against the pattern modules below) must cover each."""
  from pallas_kernels.patterns import KINDS
  from longgen_jax.hf.configuration_longgen import PATTERN_KINDS, normalize_pattern
  assert PATTERN_KINDS == KINDS
  assert {s.kind for s in SPECS} == set(KINDS)
  for i, spec in enumerate(SPECS):
    assert normalize_pattern(i, spec.to_dict()) == spec.to_dict()


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_torch_predicate_equals_spec(spec):
  q = np.arange(200)[:, None]
  k = np.arange(200)[None, :]
  ours = pattern_allows(spec.to_dict(), torch.tensor(q), torch.tensor(k)).numpy()
  np.testing.assert_array_equal(ours, spec.allowed(q, k))


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_eviction_keeps_exactly_what_future_queries_see(spec):
  """After t tokens the kept set == keys some query at position >= t may attend to."""
  for t in (1, 17, 40, 95, 160):
    kpos = torch.arange(t)
    kept = still_needed(spec.to_dict(), kpos, torch.tensor(t)).numpy()
    future = np.arange(t, t + 4 * 16 * 3 + 64)[:, None]
    needed = spec.allowed(future, np.arange(t)[None, :]).any(0)
    np.testing.assert_array_equal(kept, needed, err_msg=f"t={t}")


def _pair(n_layers=4, layers=None, seed=0):
  """A LlamaForCausalLM and a LongGenForCausalLM with the same weights."""
  cfg = tiny_llama_config("llama3", n_layers=n_layers)
  torch.manual_seed(seed)
  ref = transformers.LlamaForCausalLM(cfg).eval()
  lg_cfg = LongGenConfig(**{**cfg.to_dict(), "longgen_layers": layers})
  model = LongGenForCausalLM(lg_cfg).eval()
  model.load_state_dict(ref.state_dict(), strict=False)
  model.tie_weights()
  return ref, model


def test_all_full_longgen_matches_llama_and_its_cache():
  ref, model = _pair()
  x = torch.randint(3, 300, (2, 70))
  with torch.no_grad():
    assert torch.equal(ref(x).logits, model(x).logits)
  a = ref.generate(x[:1, :20], max_new_tokens=15, do_sample=False, eos_token_id=None)
  b = model.generate(x[:1, :20], max_new_tokens=15, do_sample=False, eos_token_id=None)
  assert torch.equal(a, b)


def test_sparse_cache_is_bounded_and_decode_matches_full_forward():
  layers = [s.to_dict() for s in (SPECS[1], SPECS[0], SPECS[3], SPECS[1])]
  _, model = _pair(layers=layers)
  x = torch.randint(3, 300, (1, 90))
  with torch.no_grad():
    full = model(x, use_cache=False).logits
    cache = LongGenCache(model.config)
    step = [model(x[:, :50], cache=cache, use_cache=True).logits]
    kept = []
    for t in range(50, 90):
      step.append(model(x[:, t:t + 1], cache=cache, use_cache=True).logits)
      kept.append(cache.kept_tokens())
  torch.testing.assert_close(torch.cat(step, 1), full, atol=1e-5, rtol=0)
  kept = np.array(kept)
  assert kept[:, 0].max() == 4 + 32 - 1 and kept[:, 3].max() == 4 + 32 - 1   # sink + window - 1
  assert kept[-1, 1] == 90                                                  # full layer keeps all
  spec = SPECS[3]
  assert kept[:, 2].max() <= spec.kv_budget(90) and kept[-1, 2] < 90        # strided: evicts


def test_left_padded_batch_matches_unpadded_rows():
  layers = [s.to_dict() for s in (SPECS[1], SPECS[0], SPECS[3], SPECS[2])]
  _, model = _pair(layers=layers)
  a = torch.randint(3, 300, (1, 60))
  b = torch.randint(3, 300, (1, 45))
  pad = torch.zeros((1, 15), dtype=torch.long)
  batch = torch.cat([a, torch.cat([pad, b], 1)], 0)
  mask = torch.cat([torch.ones(1, 60), torch.cat([torch.zeros(1, 15), torch.ones(1, 45)], 1)], 0)
  kw = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
  out = model.generate(batch, attention_mask=mask.long(), **kw)
  assert torch.equal(out[0, 60:], model.generate(a, **kw)[0, 60:])
  assert torch.equal(out[1, 60:], model.generate(b, **kw)[0, 45:])


def test_config_rejects_bad_patterns():
  with pytest.raises(ValueError, match="longgen_layers"):
    LongGenConfig(num_hidden_layers=2, longgen_layers=[{"kind": "full"}])
  with pytest.raises(ValueError, match="kind"):
    LongGenConfig(num_hidden_layers=1, longgen_layers=[{"kind": "dilated"}])


def test_chunked_prefill_matches_and_other_caches_are_refused():
  layers = [s.to_dict() for s in (SPECS[1], SPECS[0], SPECS[3], SPECS[1])]
  _, model = _pair(layers=layers)
  x = torch.randint(3, 300, (1, 75))
  kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
  whole = model.generate(x, **kw)
  chunked = model.generate(x, prefill_chunk_size=16, **kw)
  assert torch.equal(whole.sequences, chunked.sequences)
  assert generated_cache(chunked).kept_tokens()[0] == 4 + 32 - 1
  with pytest.raises(ValueError, match="cache_implementation='static'"):
    model.generate(x, cache_implementation="static", max_new_tokens=2)
  with pytest.raises(TypeError, match="need a LongGenCache"):
    model(x, cache=transformers.DynamicCache(), use_cache=True)
