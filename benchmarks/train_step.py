r"""Training-step benchmark: LongGen hybrid vs full attention on one GPU at 32K / 64K / 128K.

Model: Llama-2-7B shapes (d 4096, 32 heads, ffn 11008, vocab 32000) cut to 6 layers: the LongGen
layout keeps 2 full-attention layers in the middle and uses sink 64 + window 4096 (block 128) in
the other 4; the baseline has 6 full layers. fp32 master weights, bf16 compute, AdamW, chunked
loss (4096-token chunks), one 128K/64K/32K row per step, packed-document segment ids (4 documents;
``--no_segment_ids``: one document per row, no segment ids passed to the kernels).

For each sequence length the remat policy is the least-recompute one that the planner
(``longgen_jax.parallel.memory``, XLA:GPU-corrected on GPUs) says fits the device with 15%
headroom; hybrid and full run
back to back with the same policy, each in a fresh subprocess (clean peak-memory counters).
Reported: step time, tokens/s, model TFLOP/s, MFU (vs the bf16 dense peak of the device kind,
H100/H200 SXM = 989 TFLOP/s), peak memory (``memory_stats()["peak_bytes_in_use"]``), the
planner's estimate next to it, and the hybrid/full step-time ratio.

  python benchmarks/train_step.py                    # ~6-8 min on one H100, table + JSON
  python benchmarks/train_step.py --tiny --seq_lens=1024,512   # smoke test on CPU
  python benchmarks/train_step.py --seq_lens=32768 --steps=5 --json_out=/tmp/bench.json
  python benchmarks/train_step.py --seq_lens=131072 --no_segment_ids --backend=fa4   # [fa4] extra
  python benchmarks/train_step.py --seq_lens=131072 --without=pallas_gpu_mosaic  # auto minus a row

Each result names the backend every layer pattern ran (``backends``: what ``auto`` chose).

Needs only jax, flax, optax (no grain / ml_collections).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BASE_ENV = dict(os.environ)   # what the children get (the parent pins itself to the CPU)



def model_config(layout: str, seq_len: int, remat: str, tiny: bool = False,
                 backend: str = "auto"):
  from longgen_jax.model import llama2_7b  # pylint: disable=import-outside-toplevel
  common = dict(n_layers=6, max_seq_len=seq_len, dtype="bfloat16", param_dtype="float32",
                remat=remat, scan_layers=True, attention_backend=backend,
                rope={"theta": 5e6})
  if tiny:  # smoke test of the script itself (CPU): same layout, toy widths
    common.update(d_model=256, n_heads=4, n_kv_heads=4, ffn_dim=512, vocab_size=1024)
  if layout == "hybrid":
    return llama2_7b(layout="longgen", n_full=2, sparse="sink_window:64:4096@128",
                     full="full@128", **common)
  return llama2_7b(layout="full", full="full@128", **common)


def pick_remat(seq_len: int, budget_bytes: float, tiny: bool = False,
               platform: str = "gpu") -> tuple[str, float]:
  """Least-recompute policy whose planner estimate fits ``budget_bytes`` with 15% headroom."""
  from longgen_jax import plan  # pylint: disable=import-outside-toplevel
  from longgen_jax.parallel import memory  # pylint: disable=import-outside-toplevel
  sizes = {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1}
  # The planner's policies, least recompute first (``*_attention``: no attention re-run).
  for remat in reversed(plan.REMATS):
    est = memory.estimate(model_config("full", seq_len, remat, tiny), sizes, seq_len=seq_len,
                          global_batch=1, loss_chunk=4096, platform=platform)
    if est.total * 1.15 <= budget_bytes:
      return remat, est.total
  return "full", est.total


def probe_device(env) -> tuple[str, str, float, str]:
  """(jax version, device kind, usable bytes, platform) from a short-lived child: the parent never
  initialises the accelerator (it would hold memory the children need)."""
  code = ("import jax, json; d = jax.devices()[0]; print('PROBE ' + json.dumps([jax.__version__, "
          "d.device_kind, (d.memory_stats() or {}).get('bytes_limit', 0), d.platform]))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout
  version, kind, limit, platform = json.loads(out.split("PROBE ", 1)[1])
  return version, kind, float(limit or 0), _planner_platform(platform)


def _planner_platform(platform: str) -> str:
  """``memory.estimate``'s platform for a jax device platform (cuda / rocm -> gpu)."""
  return "gpu" if platform in ("gpu", "cuda", "rocm") else ("tpu" if platform == "tpu" else "cpu")


# ------------------------------------------------------------------------------- one config
def build_step(layout: str, seq_len: int, remat: str, tiny: bool = False,
               segment_ids: bool = True, backend: str = "auto"):
  """The benchmarked training step and its inputs: ``(cfg, step, state, rest, batch, seg)``.

  ``step`` is jitted (state donated), not yet compiled; ``seg`` [1, seq_len] numpy ids (all 1
  without ``segment_ids``: one document per row, and the batch carries no ids).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from longgen_jax.model import Llama  # pylint: disable=import-outside-toplevel
  from longgen_jax.training.step import make_step  # pylint: disable=import-outside-toplevel

  cfg = model_config(layout, seq_len, remat, tiny, backend)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(2e-5, b1=0.9, b2=0.95, weight_decay=0.1))
  graphdef, params, rest = nnx.split(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": jax.jit(tx.init)(params)}
  rng = np.random.default_rng(0)
  seg = np.ones((1, seq_len), np.int32)
  if segment_ids:
    cuts = np.sort(rng.choice(np.arange(1, seq_len), 3, replace=False))   # 4 packed documents
    seg[0] = 1 + np.searchsorted(cuts, np.arange(seq_len), side="right")
  pos = np.zeros_like(seg)
  for s in np.unique(seg[0]):
    idx = np.flatnonzero(seg[0] == s)
    pos[0, idx] = np.arange(len(idx))
  batch = {"inputs": jnp.asarray(rng.integers(0, cfg.vocab_size, (1, seq_len)), jnp.int32),
           "targets": jnp.asarray(rng.integers(0, cfg.vocab_size, (1, seq_len)), jnp.int32),
           "positions": jnp.asarray(pos), "loss_mask": jnp.ones((1, seq_len), jnp.float32)}
  if segment_ids:   # else one document per row: the kernels get no segment ids
    batch["segment_ids"] = jnp.asarray(seg)
  step = jax.jit(make_step(graphdef, tx, optax.constant_schedule(2e-5), grad_accum=1,
                           loss_chunk=4096), donate_argnums=(0,))
  return cfg, step, state, rest, batch, seg


def chosen_backends(cfg, seq_len: int, segment_ids: bool) -> dict[str, str]:
  """``{pattern: backend}``: what each layer pattern of ``cfg`` runs on this device."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from pallas_kernels import api  # pylint: disable=import-outside-toplevel
  shapes = api.AttentionShapes(1, seq_len, seq_len, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                               0, 0, segment_ids)
  return {str(spec): api.select_backend(spec, shapes, jnp.dtype(cfg.dtype),
                                        backend=cfg.attention_backend)
          for spec in dict.fromkeys(cfg.layers)}


def run_one(layout: str, seq_len: int, remat: str, steps: int, peak_override: float,
            tiny: bool = False, segment_ids: bool = True, backend: str = "auto",
            without: tuple[str, ...] = ()) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from pallas_kernels import api  # pylint: disable=import-outside-toplevel
  from longgen_jax.model.flops import flops_per_token  # pylint: disable=import-outside-toplevel
  from longgen_jax.parallel import memory  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import metrics as metrics_lib  # pylint: disable=import-outside-toplevel

  for name in without:
    api.unregister_backend(name)
  cfg, step, state, rest, batch, seg = build_step(layout, seq_len, remat, tiny, segment_ids,
                                                  backend)
  backends = chosen_backends(cfg, seq_len, segment_ids)
  dev = jax.devices()[0]
  t0 = time.perf_counter()
  compiled = step.lower(state, rest, batch).compile()
  compile_s = time.perf_counter() - t0
  state, metrics = compiled(state, rest, batch)         # warm-up
  metrics["loss"].block_until_ready()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, rest, batch)
    metrics["loss"].block_until_ready()
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  # Packed rows: count same-document attention pairs only (cuDNN's packed path skips the rest;
  # counting the whole causal row would inflate MFU ~4x for the attention part here).
  doc_lens = list(metrics_lib.doc_lengths(seg[0])) if segment_ids else None
  fl = flops_per_token(cfg, seq_len, doc_lens=doc_lens)
  tok_s = seq_len / step_s
  peak = metrics_lib.peak_flops_per_device(dev.device_kind, peak_override)
  stats = dev.memory_stats() or {}
  est = memory.estimate(cfg, {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1},
                        seq_len=seq_len, global_batch=1, loss_chunk=4096,
                        platform=_planner_platform(dev.platform))
  return {"layout": layout, "seq_len": seq_len, "remat": remat, "segment_ids": segment_ids,
          "backend": backend, "without": list(without), "backends": backends,
          "doc_lens": doc_lens, "step_s": step_s,
          "step_times": times, "tokens_per_s": tok_s, "gflop_per_token": fl.total / 1e9,
          "model_tflops": tok_s * fl.total / 1e12,
          "mfu": tok_s * fl.total / peak if peak else None, "peak_tflops": (peak or 0) / 1e12,
          "peak_mem_gib": stats.get("peak_bytes_in_use", 0) / 2 ** 30,
          "plan_estimate_gib": est.total / 2 ** 30, "compile_s": compile_s,
          "loss": float(metrics["loss"]), "device": dev.device_kind, "jax": jax.__version__}


# ------------------------------------------------------------------------------- driver
def _pct(x) -> str:
  return "n/a" if x is None else f"{x:.1%}"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seq_lens", default="131072,65536,32768",
                  help="longest first: the time budget never skips 128K")
  ap.add_argument("--layouts", default="hybrid,full")
  ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
  ap.add_argument("--remat", default="auto", help="auto (planner) or a policy name")
  ap.add_argument("--peak_tflops", type=float, default=0.0, help="override the device peak")
  ap.add_argument("--tiny", action="store_true", help="toy widths: smoke-test the script on CPU")
  ap.add_argument("--no_segment_ids", dest="segment_ids", action="store_false",
                  help="one document per row (default: 4 packed documents with segment ids)")
  ap.add_argument("--budget_s", type=float, default=480.0,
                  help="skip configs that would start after this many seconds")
  ap.add_argument("--backend", default="auto",
                  help="attention backend of every layer (pallas_kernels.api name, e.g. fa4)")
  ap.add_argument("--without", default="",
                  help="comma-separated backends taken out of the registry first (e.g. "
                       "pallas_gpu_mosaic,fa4: auto as it chose before those rows)")
  ap.add_argument("--json_out", default="")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    a = json.loads(args.child)
    print("RESULT " + json.dumps(run_one(a["layout"], a["seq_len"], a["remat"], a["steps"],
                                         a["peak"], a["tiny"], a["segment_ids"],
                                         a["backend"], tuple(a["without"]))), flush=True)
    return

  # The parent only plans (CPU); the children own the accelerator, one at a time.
  os.environ["JAX_PLATFORMS"] = "cpu"
  from pallas_kernels import api  # pylint: disable=import-outside-toplevel
  problem = api.unknown_backend(args.backend)
  if problem:
    ap.error(f"--backend: {problem}")
  without, problem = api.parse_without(args.without, args.backend)
  if problem:
    ap.error(problem)
  fraction = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # fa4: torch scratch
  env = dict(BASE_ENV, XLA_PYTHON_CLIENT_MEM_FRACTION=fraction,
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, BASE_ENV.get("PYTHONPATH")])))
  start, results = time.perf_counter(), []
  version, kind, limit, platform = probe_device(env)
  budget = limit if limit > 0 else 0.94 * 80e9
  print(f"jax {version} on {kind}; usable device memory {budget / 2 ** 30:.1f} GiB; segment ids "
        f"{'on (4 packed documents)' if args.segment_ids else 'off (one document)'}; attention "
        f"backend {args.backend}" + (f" without {', '.join(without)}" if without else ""),
        flush=True)
  for seq_len in [int(x) for x in args.seq_lens.split(",")]:
    remat = (args.remat if args.remat != "auto"
             else pick_remat(seq_len, budget, args.tiny, platform)[0])
    for layout in args.layouts.split(","):
      elapsed = time.perf_counter() - start
      if elapsed > args.budget_s:
        print(f"skip {layout} {seq_len}: {elapsed:.0f}s > budget {args.budget_s:.0f}s")
        continue
      child = json.dumps({"layout": layout, "seq_len": seq_len, "remat": remat,
                          "steps": args.steps, "peak": args.peak_tflops, "tiny": args.tiny,
                          "segment_ids": args.segment_ids, "backend": args.backend,
                          "without": without})
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", child],
                            env=env, capture_output=True, text=True, check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not lines:
        err = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        print(f"FAILED {layout} {seq_len} ({remat}):\n  " + "\n  ".join(err), flush=True)
        results.append({"layout": layout, "seq_len": seq_len, "remat": remat,
                        "segment_ids": args.segment_ids, "error": err[-1:]})
        continue
      r = json.loads(lines[-1][len("RESULT "):])
      results.append(r)
      print(f"{layout:6s} {seq_len:>7d} {remat:22s} step {r['step_s']:7.3f}s  "
            f"{r['tokens_per_s']:9.0f} tok/s  MFU {_pct(r['mfu'])}  peak "
            f"{r['peak_mem_gib']:5.1f} GiB (plan {r['plan_estimate_gib']:5.1f})  compile "
            f"{r['compile_s']:.0f}s  {r['backends']}", flush=True)

  ratios = {}
  for seq_len in sorted({r["seq_len"] for r in results}):
    by = {r["layout"]: r for r in results if r["seq_len"] == seq_len and "step_s" in r}
    if "hybrid" in by and "full" in by:
      ratios[seq_len] = by["hybrid"]["step_s"] / by["full"]["step_s"]
  print()
  print(f"| seq len | layout | remat | step s | tokens/s | model TFLOP/s | MFU | peak GiB | "
        f"plan GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    if "step_s" not in r:
      print(f"| {r['seq_len']} | {r['layout']} | {r['remat']} | failed | | | | | |")
      continue
    print(f"| {r['seq_len']} | {r['layout']} | {r['remat']} | {r['step_s']:.3f} | "
          f"{r['tokens_per_s']:.0f} | {r['model_tflops']:.0f} | "
          f"{_pct(r['mfu'])} | {r['peak_mem_gib']:.1f} | "
          f"{r['plan_estimate_gib']:.1f} |")
  for seq_len, ratio in ratios.items():
    print(f"hybrid/full step-time ratio at {seq_len}: {ratio:.3f} (speed-up {1 / ratio:.2f}x)")
  out = {"results": results, "hybrid_over_full_step_time": {str(k): v for k, v in ratios.items()},
         "segment_ids": args.segment_ids, "backend": args.backend, "without": list(without),
         "total_s": time.perf_counter() - start}
  print("JSON " + json.dumps(out))
  if args.json_out:
    with open(args.json_out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
