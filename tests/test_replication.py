"""The replication pipeline end to end at `size=tiny` on CPU: every stage feeds the next.

Corpus from this repository's own files -> synthetic retrieval documents (at a non-default
synthetic share, which must reach the data and training stages, and two questions per short
document) -> prepare -> a few pretraining steps -> base export -> the base's diagnosis, which places the
full layer of the window arm's placed twin (``hybrid_window@diagnosed``) -> a 1-step extension
per arm, the default five plus that placed arm (new RoPE theta and layout, from the base) -> a
1-sample eval
and a 1-sample retrieval probe per model (every arm, the theta-only base, KV dropping) -> export
-> report with every arm.
"""

import json
import os
import subprocess
import sys

import pytest

from longgen_jax.replication import recipe, wordings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
PLACED = "hybrid_window@diagnosed"      # the default arms and one placed by the diagnosis
FLAGS = (f"--arms={','.join([*recipe.ARMS, PLACED])}", "--synthetic_fraction=0.08",
         "--synthetic_questions=2")


def _driver(workdir, *args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  roots = ",".join(os.path.join(ROOT, d) for d in ("longgen_jax", "docs", "pallas_kernels",
                                                   "tests", "benchmarks"))
  cmd = [sys.executable, "-m", "longgen_jax.replication", f"--workdir={workdir}", "--size=tiny",
         f"--roots={roots}", "--corpus_mb=3", "--heldout_permille=300", "--lengths=2k",
         "--depths=0", "--depth_samples=1", "--samples=1", "--ppl_samples=1",
         "--speed_new_tokens=4", "--probe_samples=1", *args]
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def _json(*parts):
  with open(os.path.join(*parts), encoding="utf-8") as f:
    return json.load(f)


def test_tiny_pipeline_end_to_end(tmp_path):
  w = str(tmp_path / "study")
  r = _driver(w, *FLAGS)
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
  # the synthetic share reached the data stage, the training mixture and the stage marks.
  assert data["synthetic_fraction"] == 0.08 and data["synthetic"]["synth_short"]["wordings"]
  mean = {n: _json(w, "data", n, "index.json") for n in ("real", "synth_short")}
  mean = {n: i["num_tokens"] / i["num_documents"] for n, i in mean.items()}
  weight = _json(w, "pretrain", "train_config.json")["data"]["sources"]["retrieval"]["weight"]
  assert weight == pytest.approx(0.08 * mean["real"] / (0.92 * mean["synth_short"]))
  assert _json(w, "stages", "extend_hybrid_sw.json")["synthetic_fraction"] == 0.08
  # the questions per document reached the short synthetic documents only.
  assert data["synthetic_questions"] == 2
  assert data["synthetic"]["synth_short"]["questions"] == 2
  assert data["synthetic"]["synth_long"]["questions"] == 1

  # base: pretrained at theta 1e4, exported; the theta-only baseline differs only in theta.
  pre = _json(w, "pretrain", "train_config.json")
  assert pre["model"]["rope"]["theta"] == recipe.PRETRAIN_THETA
  assert _json(w, "base_theta_hf", "config.json")["rope_theta"] == recipe.EXTEND_THETA

  # diagnose: the base's perplexity under every placement; the lowest one places the arm.
  diag = _json(w, "stages", "diagnose.json")
  assert set(diag["ppl"]) == set(recipe.PLACEMENTS) and diag["placement"] in recipe.PLACEMENTS
  assert diag["placement"] == recipe.best_placement(diag["ppl"])
  assert len(_json(w, "diagnose", "base.json")["placement"]["layouts"]) == 6
  placed = f"hybrid_window@{diag['placement']}"
  assert f"ARM@diagnosed = ARM@{diag['placement']}" in r.stderr
  ARMS = [*recipe.ARMS, placed]

  # every arm started from the base with the new theta and its own layout.
  for arm in ARMS:
    cfg = _json(w, f"extend_{arm}", "train_config.json")
    assert cfg["init_from"] == os.path.join(w, "base_hf")
    assert cfg["model"]["rope"]["theta"] == recipe.EXTEND_THETA
    assert cfg["train"]["seq_len"] == 16 * pre["train"]["seq_len"]
    for k, v in recipe.arm_layers("tiny", arm).items():
      assert cfg["model"][k] == (list(v) if isinstance(v, tuple) else v), (arm, k)
    log = open(os.path.join(w, f"extend_{arm}", "metrics.jsonl")).read()
    assert '"init_from"' in log and "base_hf" in log

  # the eval served each model's own layout (and the kv_drop baseline its dropped cache).
  layers = {"full": "full", "hybrid_sw": "sink_window:16:64@16", "all_sparse": "sink_window:16:64@16",
            "hybrid_strided": "strided:5:64@16", "hybrid_window": "sink_window:0:64@16",
            placed: "sink_window:0:64@16"}
  for arm, sparse in layers.items():
    served = _json(w, "eval", arm, "summary.json")["served_layers"]
    if arm == "full":
      assert all(s.startswith("full") for s in served)
    elif arm == "all_sparse":
      assert served == [sparse] * 3
    elif arm == placed:                 # the placed arm: its one full layer where diagnosed
      full = recipe.full_layers(3, diag["placement"])
      assert [i for i, s in enumerate(served) if s.startswith("full")] == list(full)
      assert all(s == sparse for i, s in enumerate(served) if i not in full)
    else:
      assert served[0] == sparse and served[1].startswith("full") and served[2] == sparse
  drop = _json(w, "eval", "kv_drop", "summary.json")
  assert drop["kv_drop"] == recipe.kv_drop_spec("tiny")
  assert drop["served_layers"] == [recipe.kv_drop_spec("tiny")] * 3

  # exports: the window-only arm is a stock sliding-window model, hybrids ship remote code.
  assert _json(w, "stages", "export_hybrid_window.json")["architectures"] != ["LongGenForCausalLM"]
  assert _json(w, "stages", f"export_{placed}.json")["architectures"] != ["LongGenForCausalLM"]
  assert _json(w, "stages", "export_hybrid_sw.json")["architectures"] == ["LongGenForCausalLM"]

  # the report has every arm and baseline, with scores, ppl and speed.
  # the retrieval probe ran for every evaluated model, next to its eval results, in the
  # model's own served layout.
  for name in ARMS + ["base_theta", "kv_drop"]:
    probe = _json(w, "eval", name, "probe", "results.json")
    assert set(probe["tasks"]) == {"probe", "probe_unseen"}
    assert probe["served_layers"] == _json(w, "eval", name, "summary.json")["served_layers"]
    for task, res in probe["tasks"].items():
      recs = res["samples"]
      assert len(recs) == 1 and all(r["length"] == 2048 for r in recs)
      # the prompt fills the length minus the 64 generated tokens (and BOS) exactly
      assert all(r["prompt_tokens"] == 2048 - 64 and r["meta"]["family"] for r in recs)
      held = task == "probe_unseen"
      assert all((r["meta"]["wording"] == wordings.HELDOUT[r["meta"]["family"]]) == held
                 for r in recs)

  summary = _json(w, "report", "summary.json")
  assert set(summary["models"]) == set(ARMS) | {"base_theta", "kv_drop"}
  names = list(summary["models"])
  assert names.index(placed) == names.index("hybrid_window") + 1          # beside its arm
  assert summary["synthetic_fraction"] == 0.08
  for name, m in summary["models"].items():
    assert set(m["scores"]) == {"passkey", "niah", "niah_multikey", "vt"}, name
    assert m["scores"]["passkey"]["2048"]["n"] == 1
    assert m["probe"]["probe"]["2048"]["n"] == 1 and m["probe"]["probe_unseen"]["2048"]["n"] == 1
    assert m["ppl"]["data"].endswith("heldout") and m["speed"]["1"]["decode_tok_s"] > 0
  assert set(summary["training"]) == set(ARMS)
  tables = open(os.path.join(w, "report", "tables.md")).read()
  assert "### probe: retrieval probe" in tables and "### probe_unseen" in tables
  full = ",".join(map(str, recipe.full_layers(3, diag["placement"])))
  assert "### placement of the full layers" in tables and f"| {placed} | {full} |" in tables
  for png in ("accuracy_vs_length.png", "probe_vs_length.png", "perplexity_vs_position.png",
              "loss_curves.png"):
    assert os.path.getsize(os.path.join(w, "report", png)) > 1000

  # resumable: a second run finds every stage done and changes nothing.
  r2 = _driver(w, *FLAGS)
  assert r2.returncode == 0 and "done earlier" in r2.stderr and "pretrain: /" not in r2.stderr


def test_bad_stage_is_one_line(tmp_path):
  r = _driver(str(tmp_path), "--stages=data,bogus")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "replication: error: unknown stage(s) ['bogus']; stages: data, pretrain, base, diagnose, "
      "extend, eval, probe, export, report"]


def test_diagnosed_arm_before_the_diagnosis_is_one_line(tmp_path):
  r = _driver(str(tmp_path), "--stages=extend", "--arms=full,hybrid_sw@diagnosed")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "replication: error: arm 'hybrid_sw@diagnosed' takes the diagnose stage's placement: run "
      "the diagnose stage first (--stages=...,diagnose,extend,...)"]


def test_bad_arm_and_fraction_are_one_line(tmp_path):
  r = _driver(str(tmp_path), "--arms=hybrid_sw,hybrid_sw_sideways")
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
  assert "unknown arm 'hybrid_sw_sideways'" in r.stderr and "hybrid_sw_top" in r.stderr
  r = _driver(str(tmp_path), "--synthetic_fraction=1.5")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "replication: error: --synthetic_fraction=1.5 must lie in (0, 1)"]


def test_data_mark_with_other_synthetic_settings_is_one_line(tmp_path):
  os.makedirs(tmp_path / "stages")
  with open(tmp_path / "stages" / "data.json", "w", encoding="utf-8") as f:
    json.dump({"synthetic_fraction": 0.1, "synthetic_questions": 1}, f)
  r = _driver(str(tmp_path), "--stages=data", "--synthetic_fraction=0.1",
              "--synthetic_questions=4")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "replication: error: stages/data.json was made with --synthetic_questions=1, this run "
      "asks for --synthetic_questions=4; pass --force=data to remake the synthetic documents"]
  r = _driver(str(tmp_path), "--synthetic_questions=0")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "replication: error: --synthetic_questions=0 must be >= 1"]


@pytest.mark.parametrize("arm,full", [("hybrid_sw", (3, 4, 5)), ("hybrid_sw_bottom", (0, 1, 2)),
                                      ("hybrid_sw_top", (6, 7, 8)),
                                      ("hybrid_sw_interleaved", (1, 4, 7))])
def test_placement_arms_move_hybrid_sw_full_block(arm, full):
  from longgen_jax.model.config import ModelConfig
  from longgen_jax.replication.pipeline_speed import load_config
  config = load_config(os.path.join(ROOT, "configs", "replication.py"), f"arm={arm},synth=0.1")
  d = {k: v for k, v in config.model.to_dict().items() if k != "rope"}
  cfg = ModelConfig.from_dict(d)
  assert tuple(i for i, s in enumerate(cfg.layers) if s.is_full) == full
  assert {str(s) for s in cfg.layers if not s.is_full} == {"sink_window:64:512@64"}
  assert arm in recipe.ALL_ARMS and (arm in recipe.ARMS) == (arm == "hybrid_sw")
