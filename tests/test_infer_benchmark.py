"""``benchmarks/serving.py --quick`` (the H100 serving benchmark) as a CPU smoke test."""

import importlib.util
import json
import os
import subprocess
import sys

from pallas_kernels import api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
  spec = importlib.util.spec_from_file_location("serving_bench",
                                                os.path.join(ROOT, "benchmarks", "serving.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_quick_serving_benchmark_runs_and_reports(tmp_path, capsys):
  bench = _load()
  out = tmp_path / "serving.json"
  # --max_batch=1 keeps the CPU run short: the batch search still runs (and stops at 1).
  assert bench.main(["--quick", "--max_batch=1", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  rows = {(r["model"], r["kind"]): r for r in res["rows"]}
  for model in ("hybrid", "full"):
    b1 = rows[(model, "batch1")]
    assert b1["status"] == "ok", b1
    assert b1["prefill_s"] > 0 and b1["decode_tok_s"] > 0
    assert b1["prefill_backends"] and set(b1["prefill_backends"].values()) == {"xla"}, b1
    mb = rows[(model, "maxbatch_decode")]
    assert mb["status"] == "ok" and mb["batch"] == 1 and mb["tries"][0]["fits"], mb
  kv = {k["model"]: k for k in res["kv"]}
  assert kv["hybrid"]["kv_bytes"] < kv["full"]["kv_bytes"]
  assert res["summary"]["256"]["kv_saving_analytic"] > 0.3
  assert "KV saving" in capsys.readouterr().out


def test_benchmark_imports_no_grain_or_ml_collections():
  """The GPU machine has neither: importing the benchmark must not pull them in."""
  code = ("import runpy, sys; runpy.run_path('benchmarks/serving.py', run_name='bench'); "
          "print(sorted(m for m in ('grain', 'ml_collections', 'orbax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True, timeout=300)
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_selected_cells_with_fixed_batches(tmp_path):
  """``--cells`` runs only the named cells; ``--batches`` replaces the batch search;
  ``--backend`` picks the prefill's attention backend."""
  bench = _load()
  out = tmp_path / "serving.json"
  assert bench.main(["--quick", "--models=full", "--cells=maxbatch_prefill", "--batches=256:2",
                     "--backend=reference", "--without=pallas_gpu_mosaic,fa4",
                     "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["config"]["without"] == "pallas_gpu_mosaic,fa4"
  assert {"pallas_gpu_mosaic", "fa4"} <= set(api.available_backends())   # put back after
  rows = res["rows"]
  assert [(r["kind"], r["batch"], r["status"]) for r in rows] == [("maxbatch_prefill", 2, "ok")]
  assert rows[0]["prefill_s"] > 0
  # --backend reaches the engine: every prefill chunk (the later ones too) names it
  assert set(rows[0]["prefill_backends"].values()) == {"reference"}, rows[0]


def test_bad_cells_and_batches_are_refused(capsys):
  bench = _load()
  for bad in (["--cells=batch1,nope"], ["--batches=128k"], ["--batches=128k:0"],
              ["--backend=flash"], ["--without=fa4,flash2"], ["--backend=xla", "--without=xla"]):
    try:
      bench.main(["--quick", *bad])
    except SystemExit as e:
      assert e.code == 2
    else:
      raise AssertionError(f"{bad} was accepted")
  err = capsys.readouterr().err
  assert "nope" in err and "--backend: unknown attention backend 'flash'" in err
  assert "--without: unknown attention backend 'flash2'" in err
  assert "--without takes out 'xla', the --backend asked for" in err
