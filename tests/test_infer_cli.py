"""``python -m longgen_jax.generate`` and checkpoint loading (trainer layout)."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from longgen_jax import generate
from longgen_jax.infer.errors import InferError
from longgen_jax.infer.loading import load_model
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.llama import Llama
from longgen_jax.model.params import to_canonical


def test_generate_cli_batch_stream_and_kv_report(capsys, tmp_path):
  out = tmp_path / "res.json"
  code = generate.main(["--checkpoint=random:tiny", "--prompt=Hi", "--prompt=" + "long " * 20,
                        "--max_new_tokens=5", "--prefill_chunk=64", "--ignore_eos",
                        f"--json_out={out}"])
  cap = capsys.readouterr()
  assert code == 0, cap.err
  assert "[0] 'Hi' -> " in cap.out and "[1] 'long long" in cap.out   # prompts echoed
  assert "KV cache: batch 2" in cap.err and "sink_window:4:32@16" in cap.err
  assert "full@16" in cap.err and "saved" in cap.err
  res = json.loads(out.read_text())
  assert [len(t) for t in res["tokens"]] == [5, 5]


def test_generate_cli_single_prompt_streams_inline(capsys, tmp_path):
  f = tmp_path / "p.jsonl"
  f.write_text(json.dumps({"prompt": "Once upon a time"}) + "\n")
  code = generate.main(["--checkpoint=random:tiny", f"--prompt_file={f}", "--max_new_tokens=3",
                        "--prefill_chunk=64", "--temperature=0.7", "--top_k=5", "--ignore_eos"])
  cap = capsys.readouterr()
  assert code == 0 and "[0]" not in cap.out and cap.out.endswith("\n")
  assert cap.out.startswith("Once upon a time")   # the prompt, then its continuation
  code = generate.main(["--checkpoint=random:tiny", "--prompt=Abc", "--max_new_tokens=2",
                        "--prefill_chunk=64", "--ignore_eos", "--no_echo"])
  assert code == 0 and not capsys.readouterr().out.startswith("Abc")


@pytest.mark.parametrize("argv, msg", [
    (["--checkpoint=random:tiny", "--prompt="], "prompt 0 is empty"),
    (["--checkpoint=random:tiny"], "at least one --prompt"),
    (["--checkpoint=/nonexistent/run", "--prompt=x"], "does not exist"),
    (["--checkpoint=random:nope", "--prompt=x"], "random:<preset>"),
    (["--checkpoint=random:tiny", "--prompt=x", "--kv_drop=bogus"], "--kv_drop"),
    (["--checkpoint=random:tiny", "--prompt=x", "--prefill_chunk=50"], "prefill_chunk 50"),
])
def test_generate_cli_bad_input_is_one_line_exit_2(capsys, argv, msg):
  assert generate.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert msg in err and len(err.splitlines()) == 1


def _write_trainer_checkpoint(workdir, cfg, model, step=3):
  """A checkpoint in the trainer's layout, written by the trainer's own Checkpointer."""
  import grain  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  params = nnx.state(model, nnx.Param)
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  it = iter(grain.MapDataset.range(4).to_iter_dataset())
  config = {"model": cfg.to_dict(), "data": {"tokenizer": {"type": "byte", "path": None},
                                             "add_bos": True}}
  ck.save(step, {"params": params, "opt_state": {"mu": params}}, it, json.dumps(config),
          meta={"tokens_seen": 0})
  ck.close()


def test_load_trainer_checkpoint_workdir_and_step_dir(tmp_path):
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64,
                    max_seq_len=128, layers=("sink_window:4:32@16", "full@16",
                                             "sink_window:4:32@16"))
  model = Llama(cfg, rngs=nnx.Rngs(7))
  _write_trainer_checkpoint(str(tmp_path), cfg, model)
  want = to_canonical(model)
  for path in (tmp_path, tmp_path / "checkpoints" / "3"):
    loaded = load_model(str(path))
    assert loaded.cfg == cfg and loaded.add_bos and loaded.tokenizer.vocab_size == 259
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(InferError, match="holds no orbax checkpoint"):
    load_model(str(tmp_path / "checkpoints" / "3" / "params"))
