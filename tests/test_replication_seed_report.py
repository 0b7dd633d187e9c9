"""The replication driver's ``--seed`` (config, stage marks, one study directory per seed) and a
report of a model that was probed before its eval ran (the order ``--stages=probe,eval``)."""

import json
import os

import pytest

from longgen_jax.replication import report
from longgen_jax.replication.__main__ import Study, build_parser, main
from longgen_jax.replication.pipeline_speed import load_config
from longgen_jax.training.config_utils import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "replication.py")


@pytest.mark.parametrize("arg,seed", [("stage=pretrain,synth=0.1", 0),
                                      ("stage=pretrain,synth=0.1,seed=3", 3),
                                      ("arm=hybrid_sw,synth=0.1,seed=7", 7)])
def test_config_seed_reaches_the_trainer(arg, seed):
  assert load_config(CONFIG, arg).seed == seed


def test_config_rejects_a_negative_seed():
  with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
    load_config(CONFIG, "stage=pretrain,synth=0.1,seed=-1")


def test_driver_passes_the_seed_to_every_training_config(tmp_path):
  st = Study(build_parser().parse_args([f"--workdir={tmp_path}", "--seed=5"]))
  assert st.config_arg(stage="pretrain", steps=3).endswith(",seed=5")
  assert load_config(*st.config_arg(arm="full", steps=1).split(":", 1)).seed == 5


def test_another_seed_in_the_same_study_is_one_line(tmp_path, capsys):
  with open(tmp_path / "pretrain_plan.json", "w", encoding="utf-8") as f:
    json.dump({"budget_steps": 10, "steps": 10, "seed": 2}, f)
  for stages in ("pretrain", "extend", "base,extend,eval"):
    assert main([f"--workdir={tmp_path}", f"--stages={stages}", "--seed=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"replication: error: the pretraining in {tmp_path} was made with --seed=2, "
                   "this run asks for --seed=3; use another --workdir for another seed"]
  # a plan from before the flag counts as seed 0; stages that do not train are not checked
  with open(tmp_path / "pretrain_plan.json", "w", encoding="utf-8") as f:
    json.dump({"budget_steps": 10, "steps": 10}, f)
  assert main([f"--workdir={tmp_path}", "--stages=extend", "--seed=1"]) == 2
  assert "made with --seed=0" in capsys.readouterr().err
  assert main([f"--workdir={tmp_path}", "--stages=report", "--seed=1"]) == 0
  assert main([f"--workdir={tmp_path}", "--seed=-4"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == \
      "replication: error: --seed=-4 must be >= 0"


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


def test_report_shows_a_model_probed_before_its_eval(tmp_path):
  st = Study(build_parser().parse_args([f"--workdir={tmp_path}", "--arms=full,hybrid_sw"]))
  layers = ["full"] * 2 + ["sink_window:64:512@64"]
  samples = [{"length": 1024, "score": s, "family": "memo"} for s in (100.0, 0.0, 100.0, 100.0)]
  probe = {"served_layers": layers, "kv_drop": None,
           "tasks": {"probe": {"samples": samples}, "probe_unseen": {"samples": samples[:2]}}}
  _write(st.path("eval", "hybrid_sw", "probe", "results.json"), probe)
  summary = report.collect(st)
  assert list(summary["models"]) == ["hybrid_sw"]      # full: neither eval nor probe yet
  m = summary["models"]["hybrid_sw"]
  assert m["speed"] is None and m["scores"] == {} and m["served_layers"] == layers
  assert m["probe"]["probe"]["1024"]["mean"] == pytest.approx(75.0)
  assert m["probe"]["probe_unseen"]["1024"]["n"] == 2
  text = report.tables(summary)
  assert "| hybrid_sw | 75.0 ± 25.0 |" in text
  assert "| hybrid_sw | not evaluated yet | – | – | – | – | – | – | – |" in text
