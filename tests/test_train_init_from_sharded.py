"""``config.init_from`` loads straight into the train state's shards (8 fake CPU devices).

A tiny random HF Llama directory and its imported checkpoint (``import_hf``) are loaded by
``train.load_init_from`` on a ``fsdp=2 x sequence=4`` and an ``fsdp=8`` mesh. Every parameter
gets the sharding of the trainer's own sharded random init and the values of a one-device
import (bitwise); the loader is given a ``sharding_fn`` and every safetensors read of a sharded
tensor covers one shard only (never the whole tensor).
"""

import os

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from longgen_jax import train as train_lib  # noqa: E402
from longgen_jax.hf import import_hf  # noqa: E402
from longgen_jax.hf.shards import HFShards  # noqa: E402
from longgen_jax.parallel.testing import multidevice  # noqa: E402
from longgen_jax.training import checkpoint as ckpt_lib  # noqa: E402
from longgen_jax.training import config_utils, optim  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_cpu.py")
# The tiny trainer config reshaped to save_tiny_llama("llama2", hidden_size=64, n_layers=4).
MODEL = dict(vocab_size=300, d_model=64, ffn_dim=128, n_heads=4, n_kv_heads=4)
MESHES = {"fsdp2_seq4": dict(fsdp=2, sequence=4), "fsdp8": dict(fsdp=8)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """``{"hf": tiny HF dir, "imported": its import_hf checkpoint}``."""
  from longgen_jax.hf.tiny import save_tiny_llama  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("init_from")
  hf = str(root / "hf")
  save_tiny_llama(hf, "llama2", seed=3, hidden_size=64, n_layers=4, tokenizer=False)
  imported = str(root / "imported")
  import_hf.import_checkpoint(hf, imported, import_hf.hf_model_config(hf))
  return {"hf": hf, "imported": imported}


def _setup(mesh):
  """(model_cfg, abstract state placed like the trainer's, the trainer's param shardings)."""
  config = config_utils.load_sibling_config(TINY, "tiny_cpu.py").get_config()
  config.model.update(MODEL)
  config.train.update(dict(batch_size=8, seq_len=128))
  config.mesh.update({**dict(data=1, fsdp=1, sequence=1, tensor=1), **mesh})
  model_cfg = config_utils.validate_config(config)
  shardings = train_lib.mesh_shardings(config)
  tx = optim.make_optimizer(config.train, optim.make_schedule(config.train))
  _, abstract, _ = train_lib.abstract_state(model_cfg, tx)
  abstract = ckpt_lib.abstract_like(abstract, {"params": shardings["params"],
                                               "opt_state": shardings["opt_state"]})
  return model_cfg, abstract, shardings["params"]


def _one_device(model_cfg, hf_dir):
  """The reference: a plain one-device import, as the trainer's parameter state (numpy)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.params import from_canonical  # pylint: disable=import-outside-toplevel
  params, _ = import_hf.import_params(hf_dir, model_cfg)
  return [np.asarray(x) for x in
          jax.tree.leaves(nnx.state(from_canonical(model_cfg, params), nnx.Param))]


@multidevice(8)
@pytest.mark.parametrize("source", ["hf", "imported"])
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_init_from_loads_into_trainer_shards(sources, mesh, source, monkeypatch):
  model_cfg, abstract, want = _setup(MESHES[mesh])
  calls, reads = [], []
  real_load, real_read = import_hf.load_for_training, HFShards.read

  def load(path, cfg, **kwargs):
    calls.append(kwargs.get("sharding_fn"))
    return real_load(path, cfg, **kwargs)

  def read(self, name, index=None):
    out = real_read(self, name, index)
    reads.append((name, out.size, int(np.prod(self.shape(name)))))
    return out

  monkeypatch.setattr(import_hf, "load_for_training", load)
  monkeypatch.setattr(HFShards, "read", read)
  params = train_lib.load_init_from(sources[source], model_cfg, abstract)
  streamed = list(reads)   # init_from's reads only (the reference below reads whole tensors)
  assert len(calls) == 1 and calls[0] is not None   # the loader places tensors itself

  # Same shardings as the trainer's own sharded random init, same values as one device.
  init = train_lib.init_params(model_cfg, 0, want)
  got_leaves, init_leaves = jax.tree.leaves(params), jax.tree.leaves(init)
  assert len(got_leaves) == len(init_leaves)
  for got, ref in zip(got_leaves, init_leaves):
    assert got.sharding == ref.sharding, (got.shape, got.sharding, ref.sharding)
  for got, ref in zip(got_leaves, _one_device(model_cfg, sources["hf"])):
    np.testing.assert_array_equal(np.asarray(got), ref)

  # The embedding's width is split over all 8 devices: every device holds 1/8 of it.
  embed = params["embed"].get_value()
  assert {s.data.shape for s in embed.addressable_shards} == {(300, 8)}
  if source == "hf":   # streamed: each read of a sharded tensor is one device's shard
    whole = {name for name, size, total in streamed if size == total}
    assert whole and all(name.endswith("layernorm.weight") or name == "model.norm.weight"
                         for name in whole), sorted(whole)   # only the replicated norms
