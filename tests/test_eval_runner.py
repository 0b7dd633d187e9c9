"""``python -m longgen_jax.eval`` end to end on a tiny random model: JSON, plots, errors."""

import json
import os

import pytest

from longgen_jax.eval import cli


def test_eval_cli_writes_results_and_plots(tmp_path, capsys):
  out = tmp_path / "ev"
  code = cli.main(["--checkpoint=random:tiny", "--task=niah,ppl", "--lengths=1k",
                   "--samples=1", "--depths=0,100", "--prefill_chunk=512", f"--out={out}"])
  cap = capsys.readouterr()
  assert code == 0, cap.err
  res = json.loads((out / "results.json").read_text())
  assert set(res["tasks"]) == {"niah", "ppl"}
  niah = res["tasks"]["niah"]
  assert set(niah["grid"]["1024"]) == {"0.0", "1.0"} and len(niah["samples"]) == 2
  assert all(0 <= r["score"] <= 100 for r in niah["samples"])
  assert all(r["prompt_tokens"] <= 1024 for r in niah["samples"])
  ppl = res["tasks"]["ppl"]
  assert ppl["buckets"][0]["lo"] == 0 and ppl["buckets"][-1]["hi"] == 1024
  assert 50 < ppl["ppl"] < 2000                  # a random byte model: ~uniform over 264 ids
  for name in ("niah_heatmap", "accuracy_vs_length", "perplexity_vs_position"):
    assert os.path.getsize(res["plots"][name]) > 1000
  assert "[niah] 2/2 (100%)" in cap.err         # progress lines
  assert "niah" in cap.out and "ppl (first L tok)" in cap.out
  assert "eval: task 2/2 (ppl);" in cap.err and "overall ETA ~" in cap.err
  assert f"results written to {out / 'results.json'}" in cap.err
  # random:tiny has max_seq_len 128: 1k is beyond its (notional) training length.
  assert "eval: warning: lengths above 128 tokens" in cap.err


def test_eval_cli_lengths_too_short_draw_no_empty_chart(tmp_path, capsys):
  out = tmp_path / "short"
  code = cli.main(["--checkpoint=random:tiny", "--task=cwe,ppl", "--lengths=128", "--quiet",
                   "--samples=1", "--prefill_chunk=128", f"--out={out}"])
  cap = capsys.readouterr()
  assert code == 0, cap.err
  res = json.loads((out / "results.json").read_text())
  assert not res["tasks"]["cwe"]["by_length"]
  assert set(res["plots"]) == {"perplexity_vs_position"}
  assert not (out / "accuracy_vs_length.png").exists()
  assert "no length in [128] is long enough for cwe" in cap.err
  assert "warning" not in cap.err


def test_eval_cli_kv_drop_baseline_is_recorded(tmp_path, capsys):
  out = tmp_path / "drop"
  code = cli.main(["--checkpoint=random:tiny", "--task=ppl", "--lengths=512", "--quiet",
                   "--kv_drop=sink_window:4:16@16", "--prefill_chunk=256", f"--out={out}"])
  assert code == 0, capsys.readouterr().err
  res = json.loads((out / "results.json").read_text())
  assert res["kv_drop"] == "sink_window:4:16@16"
  assert res["served_layers"] == ["sink_window:4:32@16"] * 2 + ["sink_window:4:16@16"] * 2 + \
      ["sink_window:4:32@16"] * 2


def test_eval_cli_serve_full_serves_every_layer_full(tmp_path, capsys):
  out = tmp_path / "asfull"
  argv = ["--checkpoint=random:tiny", "--task=ppl", "--lengths=512", "--quiet",
          "--prefill_chunk=256"]
  assert cli.main(argv + ["--serve_full", f"--out={out}"]) == 0, capsys.readouterr().err
  res = json.loads((out / "results.json").read_text())
  assert res["serve_full"] is True and res["kv_drop"] is None
  assert res["served_layers"] == ["full@16"] * 6       # random:tiny: S S F F S S
  assert "served full" in capsys.readouterr().err
  # Served full, the sparse layers see more context: the same weights score differently.
  assert cli.main(argv + [f"--out={tmp_path / 'own'}"]) == 0
  own = json.loads((tmp_path / "own" / "results.json").read_text())
  assert own["serve_full"] is False and own["served_layers"][0].startswith("sink_window")
  assert own["tasks"]["ppl"]["ppl"] != res["tasks"]["ppl"]["ppl"]


@pytest.mark.parametrize("argv, msg", [
    (["--task=bogus"], "unknown task 'bogus'"),
    (["--lengths=4k,x"], "bad length"),
    (["--depths=150"], "[0, 100]"),
    (["--kv_drop=full"], "sparse pattern"),
    (["--samples=0"], ">= 1"),
    (["--serve_full", "--kv_drop=sink_window:4:16@16"], "contradict"),
])
def test_eval_cli_bad_input_is_one_line_exit_2(argv, msg, capsys, tmp_path):
  code = cli.main(["--checkpoint=random:tiny", f"--out={tmp_path}", "--lengths=1k"] + argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and msg in err[-1]
