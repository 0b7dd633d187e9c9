"""Trainer throughput over a run, per attention backend: does the step slow down, and which
backend does it (docs/replication.md "Still open", shared/notes/gpu_throughput_2026-12.md).

Runs ``python -m longgen_jax.train`` once per variant for ``--steps`` steps (fresh workdir, no
checkpoint until the end) and prints, from each run's ``metrics.jsonl``, the median tokens/s and
step time in windows of ``--window`` steps, so a fall over the run shows as a row. While the runs
go, ``nvidia-smi`` (when present) samples SM clock, power and temperature every second; each
window also gets those medians, so throttling shows too.

  python3 benchmarks/trainer_throughput.py --variants auto pallas_gpu xla --steps 150 \
      --out $OUT/trainer_throughput.json -- --config=configs/tiny_cpu.py:full \
      --config.model.d_model=512 ...

A variant is a backend name with optional modifiers: ``+prefetch0`` (``train.prefetch=0``: read
and transfer in the loop), ``+nomask`` (``data.mask_documents=False``: one segment per row plus
padding) and ``+maxsegN`` (``LONGGEN_CUDNN_MAX_SEGMENTS=N``: cuDNN's packed path with N slots).
Everything after ``--`` goes to the trainer unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def _gpu_sampler(samples: list, stop: threading.Event) -> None:
  cmd = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu,utilization.gpu",
         "--format=csv,noheader,nounits"]
  while not stop.is_set():
    try:
      out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
      sm, pw, temp, util = (float(x) for x in out.splitlines()[0].split(","))
      samples.append((time.time(), sm, pw, temp, util))
    except Exception:  # pylint: disable=broad-except
      return
    stop.wait(1.0)


def _variant_flags(variant: str) -> tuple[list[str], dict]:
  backend, *mods = variant.split("+")
  flags, env = [f"--config.model.attention_backend={backend}"], {}
  for m in mods:
    if m == "prefetch0":
      flags.append("--config.train.prefetch=0")
    elif m == "nomask":
      flags.append("--config.data.mask_documents=False")
    elif m.startswith("maxseg") and m[6:].isdigit():
      env["LONGGEN_CUDNN_MAX_SEGMENTS"] = m[6:]
    else:
      raise SystemExit(f"unknown variant modifier {m!r} in {variant!r} "
                       "(prefetch0, nomask, maxsegN)")
  return flags, env


def run_variant(variant: str, steps: int, window: int, train_args: list[str], env: dict) -> dict:
  flags, extra_env = _variant_flags(variant)
  workdir = tempfile.mkdtemp(prefix="tput_")
  cmd = [sys.executable, "-m", "longgen_jax.train", *train_args, *flags,
         f"--config.train.steps={steps}", "--config.checkpoint.every=1000000",
         f"--workdir={workdir}"]
  samples: list = []
  stop = threading.Event()
  sampler = threading.Thread(target=_gpu_sampler, args=(samples, stop), daemon=True)
  sampler.start()
  t0 = time.time()
  proc = subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, check=False)
  stop.set()
  sampler.join(timeout=5)
  wall = time.time() - t0
  recs = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      recs = [r for r in map(json.loads, f) if "step_time" in r]
  shutil.rmtree(workdir, ignore_errors=True)
  row = {"variant": variant, "rc": proc.returncode, "wall_s": wall, "windows": []}
  if proc.returncode != 0:
    row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
  for lo in range(1, steps + 1, window):
    w = [r for r in recs if lo <= r["step"] < lo + window]
    if not w:
      continue
    win = {"steps": f"{lo}-{lo + window - 1}",
           "tokens_per_s": float(np.median([r["tokens_per_s"] for r in w])),
           "step_s": float(np.median([r["step_time"] for r in w])),
           "step_s_max": float(max(r["step_time"] for r in w))}
    row["windows"].append(win)
  # GPU samples split evenly over the windows by time (the run's steps are roughly uniform).
  if samples and row["windows"]:
    arr = np.array(samples)
    parts = np.array_split(arr[len(arr) // 5:], len(row["windows"]))   # skip start-up/compile
    for win, part in zip(row["windows"], parts):
      if len(part):
        win.update(sm_mhz=float(np.median(part[:, 1])), power_w=float(np.median(part[:, 2])),
                   temp_c=float(np.median(part[:, 3])), util=float(np.median(part[:, 4])))
  return row


def main(argv=None) -> int:
  if argv is None:
    argv = sys.argv[1:]
  if "--" not in argv:
    raise SystemExit("usage: trainer_throughput.py [options] -- TRAINER ARGS (see the docstring)")
  cut = argv.index("--")
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variants", nargs="+", default=["auto", "pallas_gpu"])
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--window", type=int, default=25)
  p.add_argument("--out", default="")
  args = p.parse_args(argv[:cut])
  train_args = argv[cut + 1:]
  for v in args.variants:
    _variant_flags(v)   # bad variants fail before any run
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  rows = []
  for v in args.variants:
    row = run_variant(v, args.steps, args.window, train_args, env)
    rows.append(row)
    print(f"\n{v}: rc {row['rc']}, {row['wall_s']:.0f} s" +
          (f"  ERROR {row['error']}" if row.get("error") else ""), flush=True)
    for w in row["windows"]:
      extra = (f"  sm {w['sm_mhz']:.0f} MHz  {w['power_w']:.0f} W  {w['temp_c']:.0f} C  "
               f"util {w['util']:.0f}%" if "sm_mhz" in w else "")
      print(f"  steps {w['steps']:>9}: {w['tokens_per_s']:>11,.0f} tok/s  step "
            f"{w['step_s']:.3f} s (max {w['step_s_max']:.3f}){extra}", flush=True)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"train_args": train_args, "steps": args.steps, "rows": rows}, f, indent=1)
  return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
  raise SystemExit(main())
