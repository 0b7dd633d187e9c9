"""Arm names of the replication study: any hybrid arm at any placement (``ARM@PLACE``), the third
pass's aliases, one-line errors, and the report's order and placement table."""

import os

import pytest

from longgen_jax.model.config import ModelConfig
from longgen_jax.replication import recipe, report
from longgen_jax.replication.__main__ import main
from longgen_jax.replication.pipeline_speed import load_config
from longgen_jax.training.config_utils import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "replication.py")


def _layers(arm):
  config = load_config(CONFIG, f"arm={arm},synth=0.1")
  d = {k: v for k, v in config.model.to_dict().items() if k != "rope"}
  return ModelConfig.from_dict(d).layers


@pytest.mark.parametrize("arm,full,sparse", [
    ("hybrid_window@top", (6, 7, 8), "sink_window:0:512@64"),
    ("hybrid_window@middle", (3, 4, 5), "sink_window:0:512@64"),
    ("hybrid_strided@bottom", (0, 1, 2), "strided:5:64@64"),
    ("hybrid_strided@interleaved", (1, 4, 7), "strided:5:64@64"),
    ("hybrid_sw@top", (6, 7, 8), "sink_window:64:512@64"),
    ("hybrid_sw_top", (6, 7, 8), "sink_window:64:512@64"),
])
def test_a_placed_arm_keeps_its_pattern_and_moves_its_full_block(arm, full, sparse):
  layers = _layers(arm)
  assert tuple(i for i, s in enumerate(layers) if s.is_full) == full
  assert {str(s) for s in layers if not s.is_full} == {sparse}


def test_middle_placement_is_the_longgen_layout():
  for arm in recipe.HYBRID_ARMS:
    assert [str(s) for s in _layers(f"{arm}@middle")] == [str(s) for s in _layers(arm)]


@pytest.mark.parametrize("name,parsed", [
    ("full", ("full", None)), ("hybrid_sw", ("hybrid_sw", None)),
    ("hybrid_sw_interleaved", ("hybrid_sw", "interleaved")),
    ("hybrid_window@bottom", ("hybrid_window", "bottom"))])
def test_parse_arm(name, parsed):
  assert recipe.parse_arm(name) == parsed and recipe.is_arm(name)


def test_diagnosed_placement_parses_but_only_the_driver_resolves_it():
  assert recipe.parse_arm("hybrid_window@diagnosed") == ("hybrid_window", "diagnosed")
  with pytest.raises(ValueError, match="resolves @diagnosed after its diagnose stage"):
    recipe.arm_layers("small", "hybrid_window@diagnosed")
  with pytest.raises(ConfigError, match="resolves @diagnosed"):
    load_config(CONFIG, "arm=hybrid_sw@diagnosed,synth=0.1")


def test_best_placement_is_the_lowest_perplexity_and_middle_on_a_tie():
  ppl = {"bottom": 2.14, "middle": 2.141, "top": 2.02, "interleaved": 2.03}
  assert recipe.best_placement(ppl) == "top"
  assert recipe.best_placement(dict(ppl, top=2.141, interleaved=2.141, bottom=2.2)) == "middle"


@pytest.mark.parametrize("name,msg", [
    ("hybrid_sideways", "unknown arm 'hybrid_sideways'; arms: full, hybrid_sw"),
    ("full@top", "arm 'full@top': only a hybrid arm (hybrid_sw, hybrid_strided, hybrid_window) "
                 "takes a placement"),
    ("all_sparse@top", "arm 'all_sparse@top': only a hybrid arm"),
    ("hybrid_sw@left", "arm 'hybrid_sw@left': unknown placement 'left'; placements: bottom, "
                       "middle, top, interleaved"),
    ("hybrid_sw_top@top", "unknown arm 'hybrid_sw_top@top'"),
])
def test_bad_arm_names_are_one_line(name, msg, capsys):
  assert not recipe.is_arm(name)
  with pytest.raises(ValueError, match="^" + msg.replace("(", r"\(").replace(")", r"\)")):
    recipe.parse_arm(name)
  with pytest.raises(ConfigError, match="only a hybrid|unknown"):
    load_config(CONFIG, f"arm={name},synth=0.1")
  assert main(["--workdir=/nonexistent/never_made", f"--arms=hybrid_sw,{name}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("replication: error: ") and msg in err[0]
  assert not os.path.exists("/nonexistent/never_made")


def test_report_orders_each_hybrid_arm_before_its_placements():
  names = ["kv_drop", "hybrid_window@top", "all_sparse", "hybrid_sw_top", "full", "base_theta",
           "hybrid_window", "hybrid_sw@bottom", "hybrid_sw", "other"]
  assert report.ordered(names) == [
      "full", "hybrid_sw", "hybrid_sw@bottom", "hybrid_sw_top", "all_sparse", "hybrid_window",
      "hybrid_window@top", "base_theta", "kv_drop", "other"]


def test_placement_table_groups_each_placed_arm_with_its_arm():
  def model(full):
    layers = ["full" if i in full else "sink_window:0:512@64" for i in range(9)]
    return {"served_layers": layers, "scores": {}, "probe": {}}
  summary = {"training": {}, "models": {"full": model(range(9)), "hybrid_sw": model((3, 4, 5)),
                                        "hybrid_window": model((3, 4, 5)),
                                        "hybrid_window@top": model((6, 7, 8))}}
  rows = [line.split(" | ")[:2] for line in report.placement_table(summary)[3:]]
  assert rows == [["| hybrid_window", "3,4,5"], ["| hybrid_window@top", "6,7,8"]]
  del summary["models"]["hybrid_window@top"]
  assert report.placement_table(summary) == []
