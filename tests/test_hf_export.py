"""Ours -> HF: hybrid remote-code export, stock sliding export, bit-exact round trip (CLIs)."""

import os
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longgen_jax.hf.errors import HFConversionError  # noqa: E402
from longgen_jax.hf.export import export_checkpoint, export_params  # noqa: E402
from longgen_jax.hf.import_hf import (hf_model_config, import_checkpoint,  # noqa: E402
                                      load_for_training)
from longgen_jax.hf.parity import (greedy_full_forward, hf_greedy, jax_logits,  # noqa: E402
                                   max_abs_diff, torch_logits)
from longgen_jax.hf.tiny import save_tiny_llama  # noqa: E402
from longgen_jax.model import from_canonical  # noqa: E402

TOL = 1e-4
HYBRID = ("sink_window:4:32@16", "full@16", "strided:2:3@16", "sink_window:4:32@16")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("hf") / "llama3")
  save_tiny_llama(d, "llama3", seed=2)
  return d


@pytest.fixture(scope="module")
def hybrid(llama3_dir, tmp_path_factory):
  """(our model, transformers model) of the hybrid layout, through checkpoint + export."""
  root = tmp_path_factory.mktemp("hybrid")
  cfg = hf_model_config(llama3_dir, layout="explicit", layers=HYBRID)
  import_checkpoint(llama3_dir, str(root / "ck"), cfg)
  assert export_checkpoint(str(root / "ck"), str(root / "hf")) == "longgen"
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(root / "hf"), trust_remote_code=True,
                                                         dtype=torch.float32).eval()
  ours = from_canonical(cfg, load_for_training(str(root / "ck"), cfg))
  return ours, hf, str(root / "hf")


def test_hybrid_export_logits_match(hybrid):
  ours, hf, out = hybrid
  assert type(hf).__name__ == "LongGenForCausalLM"
  assert {"modeling_longgen.py", "cache_longgen.py", "tokenizer.json",
          "generation_config.json"} <= set(os.listdir(out))
  x = np.random.RandomState(1).randint(3, 300, (2, 120))   # > window 32, > 3 strided blocks
  diff = max_abs_diff(jax_logits(ours, x), torch_logits(hf, x))
  print(f"hybrid export: max |logits diff| = {diff:.2e}")
  assert diff < TOL


def test_hybrid_greedy_generation_and_bounded_cache(hybrid):
  ours, hf, _ = hybrid
  prompt = np.random.RandomState(2).randint(3, 300, (1, 40))
  n_new = 30
  want = greedy_full_forward(ours, prompt, n_new)
  got, cache = hf_greedy(hf, prompt, n_new)
  np.testing.assert_array_equal(got, want)
  kept = cache.kept_tokens()
  total = prompt.shape[1] + n_new - 1     # tokens whose KV went into the cache
  assert kept[0] == kept[3] == 4 + 32 - 1, kept           # sink + window - 1, not 69
  assert kept[1] == total, kept                           # full layer keeps everything
  assert kept[2] < total, kept                            # strided layer evicted blocks


def test_chunked_pattern_export_logits_match(llama3_dir, tmp_path):
  """The fourth pattern (pallas_kernels/patterns/chunked.py) through export: logits parity."""
  cfg = hf_model_config(llama3_dir, layout="explicit",
                        layers=("chunked:32@16", "full@16", "chunked:16@16", "sink_window:4:32@16"))
  import_checkpoint(llama3_dir, str(tmp_path / "ck"), cfg)
  assert export_checkpoint(str(tmp_path / "ck"), str(tmp_path / "hf")) == "longgen"
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                         trust_remote_code=True,
                                                         dtype=torch.float32).eval()
  ours = from_canonical(cfg, load_for_training(str(tmp_path / "ck"), cfg))
  x = np.random.RandomState(3).randint(3, 300, (2, 100))   # > 3 chunks of 32
  diff = max_abs_diff(jax_logits(ours, x), torch_logits(hf, x))
  assert diff < TOL
  prompt = np.random.RandomState(4).randint(3, 300, (1, 40))
  got, cache = hf_greedy(hf, prompt, 30)
  np.testing.assert_array_equal(got, greedy_full_forward(ours, prompt, 30))
  assert cache.kept_tokens()[0] <= 32 and cache.kept_tokens()[2] <= 16


def test_stock_sliding_target_matches_without_off_by_one(llama3_dir, tmp_path):
  cfg = hf_model_config(llama3_dir, layout="longgen", sparse="sink_window:0:32@16",
                        full="full@16")
  params = load_for_training(llama3_dir, cfg)
  out = str(tmp_path / "sliding")
  assert export_params(params, cfg, out, target="stock_sliding", tokenizer_src=llama3_dir) == \
      "stock_sliding"
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(hf).__name__ == "MinistralForCausalLM" and hf.config.sliding_window == 32
  ours = from_canonical(cfg, params)
  x = np.random.RandomState(3).randint(3, 300, (1, 100))
  diff = max_abs_diff(jax_logits(ours, x), torch_logits(hf, x))
  print(f"stock_sliding export: max |logits diff| = {diff:.2e}")
  assert diff < TOL
  # Off-by-one: HF's sliding overlay (kv > q - W) is exactly our i - j < window.
  from transformers.masking_utils import causal_mask_function, sliding_window_overlay
  q, k = np.arange(80)[:, None], np.arange(80)[None, :]
  hf_mask = np.vectorize(lambda i, j: causal_mask_function(0, 0, i, j)
                         and sliding_window_overlay(32)(0, 0, i, j))(q, k)
  np.testing.assert_array_equal(hf_mask, cfg.layers[0].allowed(q, k))
  got, _ = hf_greedy(hf, x[:, :40], 12)
  np.testing.assert_array_equal(got, greedy_full_forward(ours, x[:, :40], 12))


def test_export_target_errors(llama3_dir, tmp_path):
  cfg = hf_model_config(llama3_dir, layout="explicit", layers=HYBRID)
  params = load_for_training(llama3_dir, cfg)
  with pytest.raises(HFConversionError, match="sink 0"):
    export_params(params, cfg, str(tmp_path / "a"), target="stock_sliding")
  with pytest.raises(HFConversionError, match="target llama needs full attention"):
    export_params(params, cfg, str(tmp_path / "b"), target="llama")


def _cli(module, *args):
  """Runs a CLI in-process (its flags live on a private FlagValues)."""
  module.run(["prog", *args])


def test_cli_errors_are_one_line(tmp_path, capsys):
  from longgen_jax.hf import import_cli
  with pytest.raises(SystemExit) as e:
    _cli(import_cli, f"--hf_dir={tmp_path}", f"--out={tmp_path / 'ck'}")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err == f"python -m longgen_jax.hf.import_hf: error: no config.json in {tmp_path}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_bit_identical(tmp_path, dtype):
  """HF -> import CLI -> checkpoint -> export CLI -> HF: same tensors, bytes and tokenizer."""
  from safetensors import safe_open
  src, ck, out = (str(tmp_path / n) for n in ("src", "ck", "out"))
  save_tiny_llama(src, "llama2", seed=3, dtype=dtype)
  if dtype == "float32":   # the CLIs, once
    from longgen_jax.hf import export_cli, import_cli
    _cli(import_cli, f"--hf_dir={src}", f"--out={ck}")
    _cli(export_cli, f"--checkpoint={ck}", f"--out={out}", "--max_shard_gb=0.0002")
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  else:
    import_checkpoint(src, ck)
    export_checkpoint(ck, out)

  def tensors(d):
    res = {}
    for f in sorted(os.listdir(d)):
      if f.endswith(".safetensors"):
        with safe_open(os.path.join(d, f), framework="pt") as h:
          res.update({k: h.get_tensor(k) for k in h.keys()})
    return res

  a, b = tensors(src), tensors(out)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k
  for f in ("tokenizer.json", "tokenizer_config.json"):
    assert open(os.path.join(src, f), "rb").read() == open(os.path.join(out, f), "rb").read()
  cfg = transformers.AutoConfig.from_pretrained(out)
  assert cfg.architectures == ["LlamaForCausalLM"] and str(cfg.dtype).endswith(dtype)
  src_cfg = transformers.AutoConfig.from_pretrained(src)
  for key in ("vocab_size", "hidden_size", "num_key_value_heads", "rope_parameters",
              "tie_word_embeddings", "bos_token_id", "eos_token_id", "max_position_embeddings"):
    assert getattr(cfg, key) == getattr(src_cfg, key), key


def test_export_from_trainer_checkpoint(llama3_dir, tmp_path):
  """A trainer run (WORKDIR/checkpoints/<step>) exports with init_from's tokenizer and ids."""
  import json

  import grain
  from flax import nnx
  from longgen_jax.training.checkpoint import Checkpointer
  cfg = hf_model_config(llama3_dir, layout="explicit", layers=HYBRID)
  model = from_canonical(cfg, load_for_training(llama3_dir, cfg))
  run_config = {"init_from": llama3_dir, "model": cfg.to_dict(),
                "data": {"tokenizer": {"type": "hf", "path": llama3_dir}}}
  ck = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  it = iter(grain.MapDataset.range(4).to_iter_dataset())
  opt_state = {"count": np.zeros((), np.int32)}   # not read by the export
  ck.save(7, {"params": nnx.state(model, nnx.Param), "opt_state": opt_state}, it,
          json.dumps(run_config, default=list), {})
  ck.close()
  out = str(tmp_path / "out")
  assert export_checkpoint(str(tmp_path / "run"), out) == "longgen"
  assert open(os.path.join(out, "tokenizer.json"), "rb").read() == \
      open(os.path.join(llama3_dir, "tokenizer.json"), "rb").read()
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True,
                                                         dtype=torch.float32).eval()
  assert (hf.config.bos_token_id, hf.config.eos_token_id) == (1, 2)
  x = np.random.RandomState(4).randint(3, 300, (1, 80))
  assert max_abs_diff(jax_logits(model, x), torch_logits(hf, x)) < TOL


def test_export_casts_dtype(llama3_dir, tmp_path):
  from safetensors import safe_open
  cfg = hf_model_config(llama3_dir)
  params = load_for_training(llama3_dir, cfg)
  out = str(tmp_path / "bf16")
  assert export_params(params, cfg, out, dtype="bfloat16") == "llama"
  with safe_open(os.path.join(out, "model.safetensors"), framework="pt") as f:
    w = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
  assert w.dtype == torch.bfloat16
  want = torch.tensor(np.asarray(params["layers"][0]["wq"]).reshape(64, -1).T).bfloat16()
  assert torch.equal(w, want)
  assert str(transformers.AutoConfig.from_pretrained(out).dtype) == "torch.bfloat16"


def test_byte_tokenizer_run_exports_a_loadable_tokenizer(tmp_path):
  """A trainer run on the byte tokenizer exports tokenizer files AutoTokenizer loads, with the
  trainer's ids (bytes + 3, BOS 1); the weights are world-readable like any other file."""
  import json
  import stat

  import grain
  from flax import nnx
  from longgen_jax.data.tokenizers import ByteTokenizer
  from longgen_jax.model.config import ModelConfig
  from longgen_jax.model.llama import Llama
  from longgen_jax.training.checkpoint import Checkpointer
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                    max_seq_len=128, layers=("full@16", "full@16"))
  model = Llama(cfg, rngs=nnx.Rngs(0))
  ck = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  opt_state = {"count": np.zeros((), np.int32)}   # not read by the export
  ck.save(2, {"params": nnx.state(model, nnx.Param), "opt_state": opt_state},
          iter(grain.MapDataset.range(4).to_iter_dataset()),
          json.dumps({"model": cfg.to_dict(), "data": {"tokenizer": {"type": "byte", "path": ""}}},
                     default=list), {})
  ck.close()
  out = str(tmp_path / "out")
  export_checkpoint(str(tmp_path / "run"), out)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "Grüße, 世界!\n  x"
  ids = tok(text)["input_ids"]
  assert ids == [1] + ByteTokenizer().encode(text)
  assert tok.decode(ids, skip_special_tokens=True) == text
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
  mode = stat.S_IMODE(os.stat(os.path.join(out, "model.safetensors")).st_mode)
  assert mode & 0o044, oct(mode)   # not 0600
  # Without tokenizer files, generation says which tokenizer it falls back to.
  from longgen_jax.infer.loading import load_model
  from longgen_jax.model.params import to_canonical
  bare = str(tmp_path / "bare")
  export_params(jax_device_get(to_canonical(model)), cfg, bare)
  assert "using the byte tokenizer (ids = bytes + 3, BOS 1)" in load_model(bare).source
  assert "tokenizer " + out in load_model(out).source


def jax_device_get(tree):
  import jax
  return jax.device_get(tree)
