"""Bad inputs give one clear error naming the tensor, field or file (and pickles are never read)."""

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from longgen_jax.hf.errors import HFConversionError  # noqa: E402
from longgen_jax.hf.import_hf import hf_model_config, import_params, load_for_training  # noqa: E402
from longgen_jax.hf.tiny import save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """A tiny Llama-2 saved in several shards with an index."""
  d = str(tmp_path_factory.mktemp("err") / "src")
  model = save_tiny_llama(d, "llama2", seed=4, n_layers=2)
  os.remove(os.path.join(d, "model.safetensors"))
  model.save_pretrained(d, max_shard_size="100KB")
  return d


@pytest.fixture
def hf_dir(sharded, tmp_path):
  d = str(tmp_path / "hf")
  shutil.copytree(sharded, d)
  return d


def _index(d):
  with open(os.path.join(d, "model.safetensors.index.json")) as f:
    return json.load(f)["weight_map"]


def _edit_tensor(d, name, fn):
  shard = os.path.join(d, _index(d)[name])
  tensors = load_file(shard)
  tensors[name] = fn(tensors[name])
  save_file(tensors, shard, metadata={"format": "pt"})


def test_missing_shard(hf_dir):
  shard = _index(hf_dir)["model.layers.1.mlp.down_proj.weight"]
  os.remove(os.path.join(hf_dir, shard))
  with pytest.raises(HFConversionError, match=rf"shard {shard} \(holding tensor .*\) .* missing"):
    import_params(hf_dir)


def test_wrong_shape_names_the_tensor(hf_dir):
  _edit_tensor(hf_dir, "model.layers.1.self_attn.k_proj.weight", lambda t: t[:32].contiguous())
  with pytest.raises(HFConversionError,
                     match=r"tensor model\.layers\.1\.self_attn\.k_proj\.weight .* "
                           r"shape \[32, 64\], expected \[64, 64\]"):
    import_params(hf_dir)


def test_non_float_dtype_names_the_tensor(hf_dir):
  _edit_tensor(hf_dir, "model.norm.weight", lambda t: t.to(torch.int32))
  with pytest.raises(HFConversionError, match=r"tensor model\.norm\.weight .* dtype I32"):
    import_params(hf_dir)


def _write_index(d, weight_map):
  path = os.path.join(d, "model.safetensors.index.json")
  index = json.load(open(path))
  index["weight_map"] = weight_map
  json.dump(index, open(path, "w"))


def test_unexpected_tensor(hf_dir):
  name = "model.layers.0.self_attn.q_proj.bias"
  wmap = _index(hf_dir)
  shard = wmap["model.norm.weight"]
  tensors = load_file(os.path.join(hf_dir, shard))
  save_file({**tensors, name: torch.zeros(64)}, os.path.join(hf_dir, shard),
            metadata={"format": "pt"})
  _write_index(hf_dir, {**wmap, name: shard})
  with pytest.raises(HFConversionError, match=rf"unexpected tensor {name} in {shard}"):
    import_params(hf_dir)


def test_missing_tensor(hf_dir):
  wmap = _index(hf_dir)
  shard = wmap["model.norm.weight"]
  tensors = load_file(os.path.join(hf_dir, shard))
  del tensors["model.norm.weight"]
  save_file(tensors, os.path.join(hf_dir, shard), metadata={"format": "pt"})
  with pytest.raises(HFConversionError, match=rf"tensor model\.norm\.weight is missing from its "
                                              rf"shard {shard}"):
    import_params(hf_dir)
  del wmap["model.norm.weight"]
  _write_index(hf_dir, wmap)
  with pytest.raises(HFConversionError, match=r"tensor model\.norm\.weight is missing from the "
                                              r"checkpoint"):
    import_params(hf_dir)


def test_unknown_architecture(hf_dir):
  path = os.path.join(hf_dir, "config.json")
  cfg = json.load(open(path))
  cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
  json.dump(cfg, open(path, "w"))
  with pytest.raises(HFConversionError, match=r"unsupported architecture \['GPT2LMHeadModel'\]"):
    import_params(hf_dir)


def test_unsupported_config_fields(hf_dir):
  path = os.path.join(hf_dir, "config.json")
  cfg = json.load(open(path))
  json.dump({**cfg, "attention_bias": True}, open(path, "w"))
  with pytest.raises(HFConversionError, match="attention_bias"):
    import_params(hf_dir)
  json.dump({**cfg, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
            open(path, "w"))
  with pytest.raises(HFConversionError, match="rope_type 'longrope'"):
    import_params(hf_dir)


def test_pickle_only_directory_is_refused_without_reading_it(tmp_path, sharded):
  d = tmp_path / "bin"
  d.mkdir()
  shutil.copy(os.path.join(sharded, "config.json"), d)
  # Not a real pickle: if anything tried to unpickle it, the error would differ.
  (d / "pytorch_model.bin").write_bytes(b"not a pickle, must never be opened")
  with pytest.raises(HFConversionError, match=r"only pickle weights \(pytorch_model\.bin\)"):
    import_params(str(d))


def test_mismatched_model_config(hf_dir):
  cfg = hf_model_config(hf_dir).replace(n_kv_heads=2)
  with pytest.raises(HFConversionError, match=r"n_kv_heads=2 does not match .*n_kv_heads=4"):
    load_for_training(hf_dir, cfg)
  with pytest.raises(HFConversionError, match="neither an HF model directory"):
    load_for_training(os.path.dirname(hf_dir), cfg)


def test_non_finite_weight_names_the_tensor(hf_dir):
  def poison(t):
    t = t.clone()
    t[3, 5] = float("nan")
    return t
  _edit_tensor(hf_dir, "model.layers.0.mlp.up_proj.weight", poison)
  with pytest.raises(HFConversionError,
                     match=r"tensor model\.layers\.0\.mlp\.up_proj\.weight .* 1 non-finite"):
    import_params(hf_dir)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "config_json"])
def test_damaged_files_are_one_line_naming_the_file(tmp_path, sharded, damage):
  """The import command on a truncated / garbage safetensors file or a malformed config.json."""
  import subprocess
  import sys
  d = str(tmp_path / "hf")
  shutil.copytree(sharded, d)
  os.remove(os.path.join(d, "model.safetensors.index.json"))   # files found by listing
  victim = os.path.join(d, sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[0])
  if damage == "truncated":
    os.truncate(victim, os.path.getsize(victim) // 2)
  elif damage == "garbage":
    with open(victim, "wb") as f:
      f.write(os.urandom(4096))
  else:
    victim = os.path.join(d, "config.json")
    with open(victim, "w") as f:
      f.write('{"hidden_size": ')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "longgen_jax.hf.import_hf", f"--hf_dir={d}",
                         f"--out={tmp_path / 'out'}"], cwd=root, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith("python -m longgen_jax.hf.import_hf: error: ") and victim in lines[0]
