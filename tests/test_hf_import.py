"""HF Llama (safetensors) -> our model: logits parity, sharded reads, init_from for training."""

import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from longgen_jax.hf import checkpoint as ckpt_lib  # noqa: E402
from longgen_jax.hf.import_hf import (  # noqa: E402
    hf_model_config, import_checkpoint, import_params, load_for_training, tokenizer_dir)
from longgen_jax.hf.names import hf_read_index, tensor_plan  # noqa: E402
from longgen_jax.hf.parity import jax_logits, max_abs_diff, torch_logits  # noqa: E402
from longgen_jax.hf.shards import HFShards  # noqa: E402
from longgen_jax.hf.tiny import save_tiny_llama  # noqa: E402
from longgen_jax.model import from_canonical  # noqa: E402

TOL = 1e-4   # fp32, max |logit difference| (measured ~3e-7)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for style in ("llama2", "llama3"):
    d = str(root / style)
    # llama3 is saved in several shards (+ index) to exercise the index path.
    kwargs = {"max_shard_size": "200KB"} if style == "llama3" else {}
    model = save_tiny_llama(d, style, seed=1)
    if kwargs:
      for f in os.listdir(d):
        if f.endswith(".safetensors"):
          os.remove(os.path.join(d, f))
      model.save_pretrained(d, **kwargs)
    out[style] = (d, model)
  return out


@pytest.mark.parametrize("style", ["llama2", "llama3"])
def test_logits_match_transformers(tiny_dirs, style):
  d, hf_model = tiny_dirs[style]
  params, cfg = import_params(d)
  assert cfg.dtype == "float32" and all(s.is_full for s in cfg.layers)
  if style == "llama3":
    assert cfg.n_kv_heads == 2 and cfg.tie_embeddings and cfg.rope.scaling == "llama3"
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
  x = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 200))
  diff = max_abs_diff(jax_logits(from_canonical(cfg, params), x), torch_logits(hf_model, x))
  print(f"{style}: max |logits diff| = {diff:.2e}")
  assert diff < TOL


def test_shard_reads_match_full_tensor(tiny_dirs):
  """Each device's callback reads only its slice and gets exactly the canonical sub-array."""
  d, _ = tiny_dirs["llama3"]
  cfg = hf_model_config(d)
  shards = HFShards(d)
  full, _ = import_params(d)
  for p in tensor_plan(cfg):
    ref = np.asarray(ckpt_lib.to_stored(full)["layers"][str(p.path[1])][p.path[2]]
                     if p.path[0] == "layers" else full[p.path[0]])
    halves = [slice(0, n // 2) if n % 2 == 0 else slice(None) for n in p.shape]
    for axis in range(len(p.shape)):
      for part in (halves[axis], slice(p.shape[axis] // 2 if p.shape[axis] % 2 == 0 else 0, None)):
        index = tuple(part if a == axis else slice(None) for a in range(len(p.shape)))
        hf_index, post = hf_read_index(p, index)
        raw = shards.read(p.hf_name, hf_index)
        np.testing.assert_array_equal(post(raw), ref[index], err_msg=f"{p.hf_name} {index}")
        split_head_dim = p.layout in ("in_heads", "out_heads") and \
            axis == (2 if p.layout == "in_heads" else 1)
        if not split_head_dim:   # the device reads exactly its shard, nothing more
          assert raw.size == ref[index].size, (p.hf_name, index)


def test_init_from_hf_dir_and_checkpoint_with_longgen_layout(tiny_dirs, tmp_path):
  d, hf_model = tiny_dirs["llama2"]
  cfg = hf_model_config(d, layout="longgen", sparse="sink_window:4:32@16", full="full@16",
                        max_seq_len=512, param_dtype="bfloat16")
  cfg = cfg.replace(rope={**cfg.rope.to_dict(), "theta": 5e5})
  a = load_for_training(d, cfg)
  assert [s.kind for s in cfg.layers] == ["sink_window", "full", "sink_window", "sink_window"]
  assert str(a["layers"][0]["wq"].dtype) == "bfloat16"
  ck = str(tmp_path / "ck")
  import_checkpoint(d, ck, cfg)
  b = load_for_training(ck, cfg)
  np.testing.assert_array_equal(np.asarray(a["embed"]), np.asarray(b["embed"]))
  meta = ckpt_lib.read_meta(ck)
  assert meta["model"]["rope"]["theta"] == 5e5 and meta["model"]["layout"] == "longgen"
  tok = tokenizer_dir(ck)
  assert open(os.path.join(tok, "tokenizer.json"), "rb").read() == \
      open(os.path.join(d, "tokenizer.json"), "rb").read()
  from longgen_jax.data import get_tokenizer   # the data pipeline reads the copied tokenizer
  t = get_tokenizer({"type": "hf", "path": tok})
  assert t.vocab_size <= cfg.vocab_size and (t.bos_id, t.eos_id, t.pad_id) == (1, 2, 0)
  assert t.decode(t.encode("sparse layers keep sinks")) == "sparse layers keep sinks"
