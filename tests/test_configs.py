"""Every config in configs/ loads, validates and builds its model abstractly (no allocation)."""

import glob
import importlib.util
import os

import jax
import pytest
from flax import nnx

from longgen_jax.model.llama import Llama
from longgen_jax.model.params import param_count
from longgen_jax.train import abstract_state
from longgen_jax.training import config_utils, optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(name, arg=None):
  path = os.path.join(ROOT, "configs", name)
  spec = importlib.util.spec_from_file_location(f"cfg_{name[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_there_are_configs():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"tiny_cpu.py", "llama7b_128k.py", "llama70b_128k.py", "llama7b_128k_full.py",
          "llama70b_128k_full.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_docstring_and_model(path):
  name = os.path.basename(path)
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  doc = module.__doc__ or ""
  for needle in ("python -m longgen_jax.train", "Hardware:", "Expected"):
    assert needle in doc, f"{name}: the docstring must give the command, hardware and result"
  for arg in (None, "full"):
    if name.endswith("_full.py") and arg:
      continue
    config = module.get_config(arg)
    model_cfg = config_utils.validate_config(config)
    assert model_cfg.max_seq_len == config.train.seq_len
    # Abstract model and train state: shapes only, nothing allocated (70B included).
    tx = optim.make_optimizer(config.train, optim.make_schedule(config.train))
    _, state, _ = abstract_state(model_cfg, tx)
    n = sum(x.size for x in jax.tree.leaves(state["params"]))
    assert n == param_count(model_cfg)
    assert sum(x.size for x in jax.tree.leaves(state["opt_state"])) >= 2 * n
    if arg == "full" or name.endswith("_full.py"):
      assert all(s.is_full for s in model_cfg.layers)
    else:
      kinds = ["F" if s.is_full else "S" for s in model_cfg.layers]
      n_full = round(len(kinds) / 3)
      start = kinds.index("F")
      assert kinds[start:start + n_full] == ["F"] * n_full and kinds.count("F") == n_full


@pytest.mark.parametrize("name,n_layers,billions", [("llama7b_128k.py", 32, 6.74),
                                                     ("llama70b_128k.py", 80, 68.98)])
def test_llama_128k_recipe(name, n_layers, billions):
  config = load(name)
  model_cfg = config_utils.validate_config(config)
  assert model_cfg.n_layers == n_layers
  assert abs(param_count(model_cfg) / 1e9 - billions) < 0.01
  assert config.train.seq_len == 131072 and model_cfg.rope.theta == 5e6
  assert config.train.steps == 5_000_000_000 // (config.train.batch_size * 131072)
  assert config.train.schedule == "constant" and config.train.lr == 2e-5
  assert load(name, "rope_theta=5e5,batch=16").train.steps == 2384
  full = load(name.replace(".py", "_full.py"))
  assert full.to_dict() == load(name, "full").to_dict()
  from longgen_jax.parallel.mesh import MeshConfig  # the sharding layer's own parser
  sizes = MeshConfig.from_any(config.mesh).resolve(256)
  assert sizes["sequence"] == 8 and 131072 % sizes["sequence"] == 0


def test_tiny_cpu_is_small_and_hybrid():
  model_cfg = config_utils.validate_config(load("tiny_cpu.py"))
  assert 0.5e6 < param_count(model_cfg) < 5e6
  assert any(s.is_full for s in model_cfg.layers) and not all(s.is_full for s in model_cfg.layers)
  assert model_cfg.layers[0].kv_budget(128) < 128   # the sparse layers really are sparse
  strided = config_utils.validate_config(load("tiny_cpu.py", "sparse=strided:2:4@16"))
  assert strided.layers[0].kind == "strided"


def test_nnx_eval_shape_does_not_allocate_70b():
  model_cfg = config_utils.validate_config(load("llama70b_128k.py"))
  model = nnx.eval_shape(lambda: Llama(model_cfg, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(model))
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


@pytest.mark.parametrize("name", ["llama7b_128k.py", "llama70b_128k.py"])
def test_llama_data_config_only_needs_paths(name, tmp_path):
  """The 128K data section is valid once the two paths are given (Fu et al. upsampling)."""
  from longgen_jax.data.config import normalize_data_config
  config = load(name)
  config.data.sources.slimpajama.path = str(tmp_path)
  config.data.tokenizer.path = str(tmp_path)
  data = normalize_data_config(config.data)
  assert data["sources"][0]["upsample"] == {"threshold": 4096, "keep_prob": 0.1}
  assert data["mask_documents"] is False and data["tokenizer"]["type"] == "hf"


def test_tiny_data_config_is_the_shipped_corpus():
  from longgen_jax.data.config import normalize_data_config
  data = normalize_data_config(load("tiny_cpu.py").data)
  assert all(os.path.isfile(s["path"]) for s in data["sources"])


GOLDEN_128K = os.path.join(ROOT, "tests", "golden", "llama_128k_configs.json")


def test_llama_128k_configs_match_golden():
  """Every value of the 128K configs (shared body: ``training/recipe_128k.py``) is pinned.

  An intended change: regenerate the file with the ``print`` below and review its diff.
  """
  import json  # pylint: disable=import-outside-toplevel
  with open(GOLDEN_128K, encoding="utf-8") as f:
    golden = json.load(f)
  got = {}
  for key in golden:
    name, arg = key.split(":", 1)
    got[key] = json.loads(load(name, arg or None).to_json_best_effort(sort_keys=True))
  # print(json.dumps(got, indent=1, sort_keys=True))   # to regenerate GOLDEN_128K
  for key in golden:
    assert got[key] == golden[key], f"{key} differs from {GOLDEN_128K}"
  for name in ("llama7b_128k", "llama70b_128k"):   # the _full files are the ":full" variant
    assert load(f"{name}_full.py").to_dict() == load(f"{name}.py", "full").to_dict()
