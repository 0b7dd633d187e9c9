"""Smoke runs of the small benchmark scripts on CPU (their numbers are not checked: timings never
go into unit tests; only that each script runs, prints its rows and writes its JSON)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env, tmp_path):
  out = tmp_path / "out.json"
  p = subprocess.run([sys.executable, *args[:1], "--out", str(out), *args[1:]], env=env,
                     cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  return p.stdout, json.loads(out.read_text())


def test_embed_grad_runs_every_formulation(env, tmp_path):
  stdout, res = _run(["benchmarks/embed_grad.py", "--rows", "2", "--seq", "64", "--dim", "16",
                      "--loop-s", "0.001"], env, tmp_path)
  forms = {(r["tokens"], r["form"]) for r in res["rows"]}
  assert len(forms) == 12 and "python_bytes" in stdout
  # every formulation computes the same gradient as the fp32 sum, up to bf16 rounding
  assert all(r["rel_err_vs_take_f32"] < 0.05 for r in res["rows"] if r["form"] != "take_bf16")


def test_trainer_throughput_windows_and_variants(env, tmp_path):
  stdout, res = _run(["benchmarks/trainer_throughput.py", "--variants", "xla+prefetch0",
                      "--steps", "4", "--window", "2", "--", "--config=configs/tiny_cpu.py:full",
                      "--config.train.log_every=4"], env, tmp_path)
  row, = res["rows"]
  assert row["rc"] == 0 and [w["steps"] for w in row["windows"]] == ["1-2", "3-4"]
  assert "xla+prefetch0: rc 0" in stdout


def test_trainer_throughput_refuses_unknown_modifier(env):
  p = subprocess.run([sys.executable, "benchmarks/trainer_throughput.py", "--variants", "xla+foo",
                      "--", "--config=configs/tiny_cpu.py"], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=120, check=False)
  assert p.returncode != 0 and "unknown variant modifier 'foo'" in p.stderr


def test_step_memory_compiles_and_reports_errors_per_backend(env, tmp_path):
  out = tmp_path / "mem.json"
  p = subprocess.run([sys.executable, "benchmarks/step_memory.py", "--config=configs/tiny_cpu.py",
                      "--backends=xla,bogus", f"--out={out}"], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=600, check=False)
  assert p.returncode == 1, p.stderr[-2000:]      # one backend failed
  xla, bogus = json.loads(out.read_text())["rows"]
  assert xla["backend"] == "xla" and xla["temp"] > 0 and xla["planner"] > 0
  assert xla["peak"] == xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
  assert "unknown attention backend 'bogus'" in bogus["error"]


def test_attention_harness_runs_on_cpu_with_pattern_filter(env, tmp_path):
  # The GPU kernels are not there on CPU: their cells become rows with a status, the XLA rows time.
  stdout, res = _run(["benchmarks/attention.py", "--lengths", "512", "--kv-heads", "8",
                      "--patterns", "strided", "window", "--no-flex", "--loops", "2",
                      "--loop-s", "0.001", "--reps", "1", "--budget-s", "300"], env, tmp_path)
  rows = res["rows"]
  assert {r["pattern"] for r in rows} == {"strided", "window"}
  xla = [r for r in rows if r["impl"] == "xla"]
  assert [r["mode"] for r in xla] == ["fwd", "fwdbwd"] and all(r["ms"] > 0 for r in xla)
  auto = [r for r in rows if r["impl"] == "auto" and r["status"] == "ok"]
  assert auto and all("auto -> " in r["note"] for r in auto)
  assert "useful TFLOP/s" in stdout and res["meta"]["B"] == 1


def test_attention_harness_refuses_an_unknown_skip(env):
  p = subprocess.run([sys.executable, "benchmarks/attention.py", "--skip", "xla",
                      "pallas_gpu_overlap_fwd"], env=env, cwd=ROOT, capture_output=True,
                     text=True, timeout=120, check=False)
  assert p.returncode == 2 and p.stdout == ""
  assert p.stderr.startswith("--skip: unknown implementation 'pallas_gpu_overlap_fwd'; choose "
                             "from auto, cudnn, "), p.stderr
  assert len(p.stderr.strip().splitlines()) == 1
  from benchmarks import attention_flex, attention_report  # pylint: disable=import-outside-toplevel
  assert [name for name, _ in attention_flex.IMPLS] == list(attention_report.PEERS)


def test_attention_report_ratios_and_rename(tmp_path):
  rows = [dict(pattern="strided", L=65536, hkv=32, impl=impl, mode=mode, ms=1.0, tflops=tf)
          for impl, mode, tf in [("flex_fa4", "fwd", 500.0), ("flex_fa4", "fwdbwd", 400.0),
                                 ("pallas_gpu", "fwd", 450.0), ("pallas_gpu", "fwdbwd", 300.0)]]
  rows.append(dict(pattern="strided", L=65536, hkv=32, impl="xla", mode="fwd", ms=None,
                   tflops=None, status="skipped"))
  rows.append(dict(pattern="strided", L=65536, hkv=32, impl="auto", mode="fwd", ms=1.0,
                   tflops=495.0, note="auto -> fa4; n=5"))
  f = tmp_path / "a.json"
  f.write_text(json.dumps({"meta": {}, "rows": rows}))
  p = subprocess.run([sys.executable, "benchmarks/attention_report.py", str(f), "--rename",
                      "pallas_gpu=pallas_gpu_triton_bwd", "--ceiling", "1000"], cwd=ROOT,
                     capture_output=True, text=True, timeout=60, check=False)
  assert p.returncode == 0, p.stderr
  first, check = p.stdout.split("\n\n")   # the table, then the auto check
  line, = [x for x in first.splitlines() if "pallas_gpu_triton_bwd" in x]
  assert "| 450 | 300 | 0.90 | 0.75 | 45%, 30% |" in line
  assert "xla" not in p.stdout                      # untimed rows are left out
  assert "| fwd | auto -> fa4: 495 | pallas_gpu_triton_bwd: 450 | 1.10 | yes |" in check
  line, = [x for x in first.splitlines() if "auto" in x]
  assert "| auto -> fa4 | 495 | – | 0.99 | – |" in line   # auto names what it ran
  bad = subprocess.run([sys.executable, "benchmarks/attention_report.py", str(f), "--rename", "x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  assert bad.returncode != 0 and "--rename takes OLD=NEW" in bad.stderr


def test_attention_report_checks_auto_against_the_fastest_jax_row(tmp_path):
  rows = [dict(pattern="full", L=65536, hkv=32, impl=impl, mode=mode, ms=1.0, tflops=tf, note=note)
          for impl, mode, tf, note in [
              ("auto", "fwd", 600.0, "auto -> cudnn; n=5"),
              ("auto", "fwdbwd", 540.0, "auto -> cudnn"),
              ("cudnn", "fwd", 600.0, ""), ("cudnn", "fwdbwd", 540.0, ""),
              ("pallas_gpu", "fwd", 620.0, ""), ("pallas_gpu", "fwdbwd", 580.0, ""),
              ("flex_fa4", "fwd", 700.0, ""), ("flex_fa4", "fwdbwd", 650.0, "")]]
  rows += [dict(pattern="strided", L=65536, hkv=32, impl="pallas_gpu", mode="fwd", ms=1.0,
                tflops=500.0, note="")]   # no auto row: not checked
  f = tmp_path / "a.json"
  f.write_text(json.dumps({"meta": {}, "rows": rows}))
  p = subprocess.run([sys.executable, "benchmarks/attention_report.py", str(f)], cwd=ROOT,
                     capture_output=True, text=True, timeout=60, check=False)
  assert p.returncode == 0, p.stderr
  checks = p.stdout.split("| auto / fastest |", 1)[1].splitlines()[2:]
  assert checks == [   # the torch peer (700) is not a choice of auto's; 600 / 620 is within 5%
      "| full | 64K | 32/32 | fwd | auto -> cudnn: 600 | pallas_gpu: 620 | 0.97 | yes |",
      "| full | 64K | 32/32 | fwdbwd | auto -> cudnn: 540 | pallas_gpu: 580 | 0.93 | **no** |"]


def test_step_attention_calls_counts_targets_and_runs_tiny(env, tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  from step_attention_calls import count_lowered_targets, count_targets  # pylint: disable=import-outside-toplevel,line-too-long
  hlo = ('%a = custom-call(%q), custom_call_target="xla_buffer_python_gpu_callback"\n'
         '%b = custom-call(%q), custom_call_target="__cudnn$fmhaSoftmax"\n'
         '%c = custom-call(%g), custom_call_target="xla_buffer_python_gpu_callback"\n')
  assert count_targets(hlo) == {"xla_buffer_python_gpu_callback": 2, "__cudnn$fmhaSoftmax": 1}
  mlir = ('%0:2 = stablehlo.custom_call @xla_buffer_python_gpu_callback(%q) {api_version = 4 : i32}\n'
          '%1 = "stablehlo.custom_call"(%q) <{call_target_name = "__cudnn$fmhaSoftmax"}>\n'
          '%2 = stablehlo.custom_call @xla_buffer_python_gpu_callback(%g)\n')
  assert count_lowered_targets(mlir) == {"xla_buffer_python_gpu_callback": 2,
                                         "__cudnn$fmhaSoftmax": 1}
  p = subprocess.run([sys.executable, "benchmarks/step_attention_calls.py", "--tiny", "--seq_len",
                      "256", "--backends", "xla", "--hlo_dir", str(tmp_path)], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=600, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  res = json.loads(p.stdout.split("JSON ", 1)[1])
  assert res["results"]["xla"]["custom_calls"] == {}        # the XLA backend is plain HLO
  assert res["results"]["xla"]["lowered_custom_calls"] == {}
  assert (tmp_path / "step_full_256_xla.hlo.txt").read_text().startswith("HloModule")
  p = subprocess.run([sys.executable, "benchmarks/step_attention_calls.py", "--tiny",
                      "--backends", "fast"], env=env, cwd=ROOT, capture_output=True, text=True,
                     timeout=300, check=False)
  assert p.returncode == 2
  assert "--backends: unknown attention backend 'fast'; choose one of auto, " in p.stderr


@pytest.mark.parametrize("script", [["mosaic_bwd.py", "--length", "1024"],
                                    ["mosaic_fwd.py", "--lengths", "1024"],
                                    ["profile_forward.py", "ours", "--length", "1024"]])
def test_mosaic_ab_says_it_needs_a_gpu(env, script):
  p = subprocess.run([sys.executable, "benchmarks/" + script[0], *script[1:]], env=env,
                     cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert p.returncode == 2 and "needs a GPU (Hopper); found cpu" in p.stderr
  assert len(p.stderr.strip().splitlines()) == 1


def test_profile_forward_refuses_fa4_with_a_sparse_pattern(env):
  """``benchmarks/profile_forward.py fa4`` profiles FA4's native causal kernel only."""
  p = subprocess.run([sys.executable, "benchmarks/profile_forward.py", "fa4", "--pattern",
                      "strided"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                     check=False)
  assert p.returncode == 2 and "fa4 takes only --pattern full" in p.stderr


def test_mosaic_ab_time_row_reference_error_and_failure(tmp_path):
  """``benchmarks/mosaic_ab.py``: the first variant's outputs become the reference, later rows
  get their largest relative error against it, a failing call becomes an error row, and the
  rows go to JSON."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import mosaic_ab  # pylint: disable=g-import-not-at-top
  x = jnp.arange(1.0, 5.0)
  import dataclasses  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.make_dataclass("Cfg", [("block_q", int, 64)])()
  assert mosaic_ab.new_row("full", "full", "default", cfg, 1024, 32, 8) == dict(
      pattern="full", spec="full", variant="default", config={"block_q": 64}, L=1024, hq=32,
      hkv=8, ms=None, tflops=None, err=None, status="ok")
  first = dict(status="ok", err=None)
  ref = mosaic_ab.time_row(first, lambda: (x, 2 * x), 1e12, lambda o: o, None)
  assert first["err"] is None and first["ms"] > 0 and len(first["loop_ms"]) == 5
  assert len(ref) == 2 and np.array_equal(ref[1], 2 * np.arange(1.0, 5.0))
  second = dict(status="ok", err=None)
  assert mosaic_ab.time_row(second, lambda: (x, 2 * x + 3), 1e12, lambda o: o, ref) is ref
  assert second["err"] == pytest.approx(np.linalg.norm([3.0] * 4) / np.linalg.norm(2 * x))
  bad = dict(status="ok", err=None)
  mosaic_ab.time_row(bad, lambda: 1 / 0, 1e12, lambda o: o, ref)
  assert bad["status"] == "error" and mosaic_ab.shown(bad).startswith("ZeroDivisionError")
  assert "TFLOP/s err" in mosaic_ab.shown(second)
  mosaic_ab.write_rows(str(tmp_path / "r.json"), [first, second, bad])
  assert [r["status"] for r in json.loads((tmp_path / "r.json").read_text())["rows"]] == [
      "ok", "ok", "error"]


def test_mosaic_fwd_variants_are_valid_configs():
  """Every ``benchmarks/mosaic_fwd.py`` variant is a ``MosaicConfig`` (unknown fields or values
  would fail only on the GPU machine otherwise)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from benchmarks import mosaic_fwd  # pylint: disable=g-import-not-at-top
  from pallas_kernels.backends import pallas_gpu_mosaic as pm  # pylint: disable=g-import-not-at-top
  assert next(iter(mosaic_fwd.VARIANTS)) == "default" and mosaic_fwd.VARIANTS["default"] == {}
  for name, over in mosaic_fwd.VARIANTS.items():
    cfg = dataclasses.replace(pm.MosaicConfig(), **over)
    assert all(getattr(cfg, k) == v for k, v in over.items()), name
