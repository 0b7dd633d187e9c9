"""``benchmarks/train_step.py --tiny`` (the H100 training-step benchmark) as a CPU smoke test."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("packed", [True, False])
def test_tiny_benchmark_measures_both_layouts(tmp_path, packed):
  out = tmp_path / "train_step.json"
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"), "--tiny",
         "--seq_lens", "256", "--budget_s", "200", "--json_out", str(out)]
  if not packed:   # and an explicit backend (what --backend=fa4 does on a GPU)
    cmd += ["--no_segment_ids", "--backend", "xla"]
  else:            # auto minus a row (it never applies on the CPU: auto is xla either way)
    cmd += ["--without", "pallas_gpu_mosaic,fa4"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=600, capture_output=True)
  res = json.loads(out.read_text())
  rows = {r["layout"]: r for r in res["results"]}
  assert set(rows) == {"hybrid", "full"}
  for r in rows.values():
    assert "error" not in r, r
    assert r["step_s"] > 0 and r["segment_ids"] == packed
    assert r["backend"] == ("auto" if packed else "xla")
    assert r["without"] == (["pallas_gpu_mosaic", "fa4"] if packed else [])
    patterns = {"hybrid": {"sink_window:64:4096@128", "full@128"}, "full": {"full@128"}}
    assert r["backends"] == dict.fromkeys(patterns[r["layout"]], "xla")
    assert (r["doc_lens"] is not None) == packed
    if packed:
      assert sum(r["doc_lens"]) == 256 and len(r["doc_lens"]) == 4
  assert "256" in res["hybrid_over_full_step_time"]


def test_unknown_backend_is_one_line_error():
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"), "--tiny",
         "--backend", "fast"]
  p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300,
                     capture_output=True, text=True, check=False)
  assert p.returncode == 2
  assert "--backend: unknown attention backend 'fast'; choose one of auto, " in p.stderr
  p = subprocess.run(cmd[:-2] + ["--without", "fa4,split"], cwd=ROOT, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                     check=False)
  assert p.returncode == 2
  assert "--without: unknown attention backend 'split'; choose one of cudnn, " in p.stderr
