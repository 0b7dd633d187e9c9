"""``longgen_jax.ckpt``: one classifier and one reader of checkpoints for train, infer and hf."""

import ast
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from longgen_jax import ckpt
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import abstract_model, to_canonical

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ModelConfig(vocab_size=264, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64,
                  max_seq_len=128, layers=("sink_window:4:32@16", "full@16",
                                           "sink_window:4:32@16"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """``(workdir, model)``: a trainer run with steps 2 and 5, written by the trainer's own
  Checkpointer (step 5 holds ``model``'s parameters)."""
  import grain  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("run"))
  config = {"model": CFG.to_dict(), "data": {"tokenizer": {"type": "byte", "path": None},
                                             "add_bos": True}}
  writer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False)
  model = None
  for step, seed in ((2, 1), (5, 7)):
    model = Llama(CFG, rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    writer.save(step, {"params": params, "opt_state": {"mu": params}},
                iter(grain.MapDataset.range(4).to_iter_dataset()), json.dumps(config),
                meta={"tokens_seen": 0})
  writer.close()
  return workdir, model


def _assert_same(got, want):
  got, want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kind_of_each_kind(run, tmp_path):
  workdir, _ = run
  for path in (workdir, os.path.join(workdir, "checkpoints"),
               os.path.join(workdir, "checkpoints", "2")):
    assert ckpt.kind_of(path) == ckpt.TRAINER
  assert ckpt.trainer_step(workdir) == (os.path.join(workdir, "checkpoints"), 5)
  assert ckpt.trainer_step(os.path.join(workdir, "checkpoints", "2"))[1] == 2
  converted, hf = tmp_path / "converted", tmp_path / "hf"
  converted.mkdir()
  (converted / "longgen_checkpoint.json").write_text("{}")
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  assert ckpt.kind_of(str(converted)) == ckpt.CONVERTED
  assert ckpt.kind_of(str(hf)) == ckpt.HF


def test_kind_of_missing_or_unrecognised_is_one_loud_line(run, tmp_path):
  with pytest.raises(ckpt.CheckpointReadError, match=r"^init_from='/no/such' does not exist$"):
    ckpt.kind_of("/no/such", what="init_from")
  empty = tmp_path / "empty"
  empty.mkdir()
  params_dir = os.path.join(run[0], "checkpoints", "5", "params")   # inside a step: no kind
  for path in (str(empty), params_dir):
    with pytest.raises(ckpt.CheckpointReadError) as e:
      ckpt.kind_of(path, what="--checkpoint")
    msg = str(e.value)
    assert msg.startswith(f"--checkpoint={path!r} holds no orbax checkpoint step")
    assert "neither an HF model directory" in msg and "\n" not in msg
  with pytest.raises(ckpt.CheckpointReadError, match="is a trainer run .*; expected an imported"):
    ckpt.require_kind(run[0], (ckpt.CONVERTED, ckpt.HF))


def test_callers_map_path_errors_to_their_own_type(tmp_path):
  from longgen_jax import train  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf.errors import HFConversionError  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf.export import export_checkpoint  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.errors import InferError  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.loading import load_model  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.errors import ConfigError  # pylint: disable=import-outside-toplevel
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="init_from=.* holds no orbax checkpoint step"):
    train.load_init_from(str(empty), CFG, {})
  with pytest.raises(InferError, match="--checkpoint=.* does not exist"):
    load_model(str(tmp_path / "missing"))
  with pytest.raises(HFConversionError, match="checkpoint=.* holds no orbax checkpoint step"):
    export_checkpoint(str(empty), str(tmp_path / "out"))


def test_train_infer_and_hf_read_the_same_params(run):
  from longgen_jax import train  # pylint: disable=import-outside-toplevel
  from longgen_jax.hf.run_checkpoint import load_run  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.loading import load_model  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  workdir, model = run
  want = to_canonical(model)

  restored = ckpt.restore_run(workdir)
  assert (restored.step, restored.cfg) == (5, CFG)
  assert restored.config["data"]["add_bos"] is True
  _assert_same(restored.params, want)

  loaded = load_model(workdir)   # infer
  assert loaded.cfg == CFG and "step 5" in loaded.source
  _assert_same(loaded.params, want)

  params, cfg, info = load_run(workdir)   # hf (export)
  assert cfg == CFG and info["step"] == 5 and info["byte_tokenizer"]
  _assert_same(params, want)

  graphdef, abstract, rest = nnx.split(abstract_model(CFG), nnx.Param, ...)
  state = train.load_init_from(workdir, CFG, {"params": ckpt_lib.abstract_like(abstract)})   # train
  _assert_same(to_canonical(nnx.merge(graphdef, state, rest)), want)


def test_restore_needs_no_grain_or_ml_collections(run):
  """A serving machine may lack the trainer's deps: importing and restoring must not need them."""
  code = ("import sys; sys.modules['grain'] = None; sys.modules['ml_collections'] = None\n"
          "from longgen_jax import ckpt\n"
          "assert 'orbax' not in sys.modules and 'longgen_jax.training' not in sys.modules\n"
          f"r = ckpt.restore_run({run[0]!r})\n"
          "print(r.step, sorted(r.params))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "5 ['embed', 'final_norm', 'layers', 'lm_head']"


def _imported_modules(path):
  """Every module an ``import`` / ``from ... import`` in ``path`` names (relative ones too)."""
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = ("." * node.level) + (node.module or "")
      yield base
      yield from (f"{base}.{a.name}" if node.module else base + a.name for a in node.names)


@pytest.mark.parametrize("package", ["infer", "hf"])
def test_infer_and_hf_do_not_import_the_trainer(package):
  """Only ``longgen_jax.ckpt`` reads trainer checkpoints; infer and hf go through it."""
  offenders = []
  top = os.path.join(ROOT, "longgen_jax", package)
  for folder, _, files in os.walk(top):
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      for mod in _imported_modules(path):
        if mod == "longgen_jax.training" or mod.startswith(("longgen_jax.training.", "..training")):
          offenders.append(f"{os.path.relpath(path, ROOT)}: {mod}")
  assert not offenders, offenders
