"""The replication pipeline end to end at `size=tiny` on CPU: every stage feeds the next.

Corpus from this repository's own files -> synthetic retrieval documents -> prepare -> a few
pretraining steps -> base export -> a 1-step extension per arm (new RoPE theta and layout, from
the base) -> a 1-sample eval per model (every arm, the theta-only base, KV dropping) -> export ->
report with every arm.
"""

import json
import os
import subprocess
import sys

import pytest

from longgen_jax.replication import recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _driver(workdir, *args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  roots = ",".join(os.path.join(ROOT, d) for d in ("longgen_jax", "docs", "pallas_kernels",
                                                   "tests", "benchmarks"))
  cmd = [sys.executable, "-m", "longgen_jax.replication", f"--workdir={workdir}", "--size=tiny",
         f"--roots={roots}", "--corpus_mb=3", "--heldout_permille=300", "--lengths=2k",
         "--depths=0", "--depth_samples=1", "--samples=1", "--ppl_samples=1",
         "--speed_new_tokens=4", *args]
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def _json(*parts):
  with open(os.path.join(*parts), encoding="utf-8") as f:
    return json.load(f)


def test_tiny_pipeline_end_to_end(tmp_path):
  w = str(tmp_path / "study")
  r = _driver(w)
  assert r.returncode == 0, r.stderr[-3000:]

  # data: real text, held-out split by directory, synthetic documents, grain shards.
  data = _json(w, "stages", "data.json")
  assert data["manifest"]["train"]["documents"] > 0 and data["manifest"]["heldout"]["documents"] > 0
  for name in ("real", "heldout", "synth_short", "synth_long"):
    assert _json(w, "data", name, "index.json")["num_tokens"] > 0
  train_sources = {json.loads(l)["source"] for l in open(os.path.join(w, "data", "raw", "train.jsonl"))}
  held_sources = {json.loads(l)["source"] for l in open(os.path.join(w, "data", "raw", "heldout.jsonl"))}
  assert not train_sources & held_sources
  assert data["pipeline"]["pretrain"]["tokens_per_s"] > 0

  # base: pretrained at theta 1e4, exported; the theta-only baseline differs only in theta.
  pre = _json(w, "pretrain", "train_config.json")
  assert pre["model"]["rope"]["theta"] == recipe.PRETRAIN_THETA
  assert _json(w, "base_theta_hf", "config.json")["rope_theta"] == recipe.EXTEND_THETA

  # every arm started from the base with the new theta and its own layout.
  for arm in recipe.ARMS:
    cfg = _json(w, f"extend_{arm}", "train_config.json")
    assert cfg["init_from"] == os.path.join(w, "base_hf")
    assert cfg["model"]["rope"]["theta"] == recipe.EXTEND_THETA
    assert cfg["train"]["seq_len"] == 16 * pre["train"]["seq_len"]
    for k, v in recipe.arm_layers("tiny", arm).items():
      assert cfg["model"][k] == v, (arm, k)
    log = open(os.path.join(w, f"extend_{arm}", "metrics.jsonl")).read()
    assert '"init_from"' in log and "base_hf" in log

  # the eval served each model's own layout (and the kv_drop baseline its dropped cache).
  layers = {"full": "full", "hybrid_sw": "sink_window:16:64@16", "all_sparse": "sink_window:16:64@16",
            "hybrid_strided": "strided:5:64@16", "hybrid_window": "sink_window:0:64@16"}
  for arm, sparse in layers.items():
    served = _json(w, "eval", arm, "summary.json")["served_layers"]
    if arm == "full":
      assert all(s.startswith("full") for s in served)
    elif arm == "all_sparse":
      assert served == [sparse] * 3
    else:
      assert served[0] == sparse and served[1].startswith("full") and served[2] == sparse
  drop = _json(w, "eval", "kv_drop", "summary.json")
  assert drop["kv_drop"] == recipe.kv_drop_spec("tiny")
  assert drop["served_layers"] == [recipe.kv_drop_spec("tiny")] * 3

  # exports: the window-only arm is a stock sliding-window model, hybrids ship remote code.
  assert _json(w, "stages", "export_hybrid_window.json")["architectures"] != ["LongGenForCausalLM"]
  assert _json(w, "stages", "export_hybrid_sw.json")["architectures"] == ["LongGenForCausalLM"]

  # the report has every arm and baseline, with scores, ppl and speed.
  summary = _json(w, "report", "summary.json")
  assert set(summary["models"]) == set(recipe.ARMS) | {"base_theta", "kv_drop"}
  for name, m in summary["models"].items():
    assert set(m["scores"]) == {"passkey", "niah", "niah_multikey", "vt"}, name
    assert m["scores"]["passkey"]["2048"]["n"] == 1
    assert m["ppl"]["data"].endswith("heldout") and m["speed"]["1"]["decode_tok_s"] > 0
  assert set(summary["training"]) == set(recipe.ARMS)
  for png in ("accuracy_vs_length.png", "perplexity_vs_position.png", "loss_curves.png"):
    assert os.path.getsize(os.path.join(w, "report", png)) > 1000

  # resumable: a second run finds every stage done and changes nothing.
  r2 = _driver(w)
  assert r2.returncode == 0 and "done earlier" in r2.stderr and "pretrain: /" not in r2.stderr


def test_bad_stage_is_one_line(tmp_path):
  r = _driver(str(tmp_path), "--stages=data,bogus")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "replication: error: unknown stage(s) ['bogus']; stages: data, pretrain, base, extend, "
      "eval, export, report"]
