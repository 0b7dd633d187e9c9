r"""``python -m longgen_jax.eval``: long-context evaluation of a checkpoint.

  python -m longgen_jax.eval --checkpoint=WORKDIR --task=passkey,niah,ruler,ppl \
      --lengths=4k,8k,...,128k --samples=5 --out=eval_out
  python -m longgen_jax.eval --checkpoint=FULL_WORKDIR --task=niah --lengths=4k,...,64k \
      --kv_drop=sink_window:64:4096          # inference-time KV dropping baseline
  python -m longgen_jax.eval --checkpoint=HYBRID_WORKDIR --task=niah --lengths=1k,2k \
      --serve_full                           # the sparse layers served as full attention

Writes ``OUT/results.json`` and PNG plots (``niah_heatmap.png``, ``accuracy_vs_length.png``,
``perplexity_vs_position.png``), prints a summary table and progress lines with ETAs. Tasks:
``passkey``, ``niah``, the RULER-style ``niah_single``, ``niah_multikey``, ``niah_multivalue``,
``niah_multiquery``, ``vt``, ``cwe``, ``fwe`` (group ``ruler``), ``ppl``, or ``all``
(``docs/eval.md``). Exit code 2 and one line on stderr for a bad request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from longgen_jax.eval.errors import EvalError
from longgen_jax.eval.registry import parse_lengths, resolve_tasks
from longgen_jax.infer.errors import InferError


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m longgen_jax.eval",
                              description="Passkey / NIAH / RULER-style / perplexity evaluation.")
  p.add_argument("--checkpoint", required=True, help="trainer workdir, converted checkpoint, "
                 "HF dir, or random:<preset>[:<seed>]")
  p.add_argument("--task", default="passkey", help="comma list: passkey, niah, niah_single, "
                 "niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe, ppl; groups "
                 "ruler, all")
  p.add_argument("--lengths", default="4k,8k,...,128k", help="context lengths in tokens "
                 "(4k = 4096; 'a,b,...,z' continues the progression)")
  p.add_argument("--samples", type=int, default=5, help="samples per length (and depth)")
  p.add_argument("--depths", default="0,25,50,75,100", help="needle depths in percent (niah, "
                 "passkey)")
  p.add_argument("--ppl_samples", type=int, default=1, help="documents for the ppl task")
  p.add_argument("--ppl_data", default=None, help="ppl on documents of a prepared ArrayRecord "
                 "directory (python -m longgen_jax.data.prepare) instead of the held-out chronicle")
  p.add_argument("--batch", type=int, default=1, help="prompts generated together")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="eval_out", help="output directory")
  p.add_argument("--tokenizer", default=None)
  p.add_argument("--add_bos", choices=("auto", "yes", "no"), default="auto")
  p.add_argument("--kv_drop", default=None, help="serve full layers as this sparse pattern "
                 "(e.g. sink_window:64:4096): the no-training KV-dropping baseline")
  p.add_argument("--serve_full", action="store_true", help="serve every layer as full "
                 "attention: what a sparse or hybrid model's sparse layers cost it (the "
                 "reverse of --kv_drop)")
  p.add_argument("--prefill_chunk", type=int, default=None, help="tokens per row per prefill "
                 "chunk (default 16384 rounded to a valid chunk; one-shot within one chunk)")
  p.add_argument("--paged", action="store_true")
  p.add_argument("--backend", default="auto")
  p.add_argument("--quiet", action="store_true", help="no progress lines")
  return p


def parse_depths(text: str) -> list[float]:
  try:
    ds = [float(t) / 100.0 for t in text.split(",") if t.strip()]
  except ValueError:
    raise EvalError(f"--depths={text!r}: use percentages, e.g. 0,25,50,75,100") from None
  if not ds or any(not 0 <= d <= 1 for d in ds):
    raise EvalError(f"--depths={text!r}: percentages must lie in [0, 100]")
  return ds


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except (EvalError, InferError) as e:
    print(f"longgen_jax.eval: error: {e}", file=sys.stderr)
    return 2
  return 0


def run(args) -> dict:
  """Validates everything, loads the model, runs the tasks, writes JSON + plots."""
  names = resolve_tasks(args.task)
  lengths = parse_lengths(args.lengths)
  depths = parse_depths(args.depths)
  if args.samples < 1 or args.batch < 1 or args.ppl_samples < 1:
    raise EvalError("--samples, --batch and --ppl_samples must be >= 1")
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.ERROR)
  from pallas_kernels.spec import SpecError, as_spec  # pylint: disable=import-outside-toplevel
  from longgen_jax.eval import plots, runner  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.engine import Engine  # pylint: disable=import-outside-toplevel
  from longgen_jax.infer.loading import load_model  # pylint: disable=import-outside-toplevel
  try:
    kv_drop = as_spec(args.kv_drop) if args.kv_drop else None
  except SpecError as e:
    raise EvalError(f"--kv_drop: {e}") from None
  if kv_drop and args.serve_full:
    raise EvalError("--kv_drop and --serve_full contradict each other: give one")

  model = load_model(args.checkpoint, tokenizer=args.tokenizer)
  tok = model.tokenizer
  add_bos = model.add_bos if args.add_bos == "auto" else args.add_bos == "yes"
  engine = Engine(model.cfg, model.params, kv_drop=kv_drop, serve_full=args.serve_full,
                  prefill_chunk=args.prefill_chunk, paged=args.paged, backend=args.backend)
  stop = [tok.eos_id] if tok.eos_id is not None else []
  served = (f"kv_drop {kv_drop}" if kv_drop else "") or ("served full" if args.serve_full else "")
  label = f"{os.path.basename(os.path.normpath(args.checkpoint))}" + (
      f" + {served}" if served else "")
  print(f"eval: {model.cfg.describe()} [{model.source}]"
        + (f"; {served}" if served else ""), file=sys.stderr)
  print(f"eval: tasks {', '.join(names)}; lengths {lengths}", file=sys.stderr)
  if max(lengths) > model.cfg.max_seq_len:
    print(f"eval: warning: lengths above {model.cfg.max_seq_len} tokens (the model's "
          f"max_seq_len, its training length) are beyond what it was trained on: expect "
          f"scores near chance" + (f" and a long run ({max(lengths)} tokens)"
                                   if max(lengths) > 16 * model.cfg.max_seq_len else ""),
          file=sys.stderr)
  os.makedirs(args.out, exist_ok=True)
  results = {"checkpoint": args.checkpoint, "model": model.cfg.describe(),
             "served_layers": [str(s) for s in engine.specs],
             "kv_drop": str(kv_drop) if kv_drop else None, "serve_full": args.serve_full,
             "lengths": lengths,
             "depths": depths, "samples": args.samples, "seed": args.seed, "tasks": {},
             "plots": {}}
  t0 = time.perf_counter()
  for i, name in enumerate(names):
    if not args.quiet:
      print(overall_progress(i, names, lengths, time.perf_counter() - t0), file=sys.stderr)
    if name == "ppl":
      results["tasks"][name] = runner.run_perplexity(engine, tok, add_bos, lengths,
                                                     samples=args.ppl_samples, seed=args.seed,
                                                     quiet=args.quiet, data=args.ppl_data)
    else:
      results["tasks"][name] = runner.run_generation(
          engine, tok, add_bos, name, lengths, samples=args.samples, depths=depths,
          seed=args.seed, batch=args.batch, stop_tokens=stop, quiet=args.quiet)
    _write(results, args.out)          # partial results survive an interrupted run
  results["seconds"] = time.perf_counter() - t0
  gen = {n: r["by_length"] for n, r in results["tasks"].items() if r.get("by_length")}
  skipped = [n for n, r in results["tasks"].items() if "by_length" in r and not r["by_length"]]
  if skipped:
    print(f"eval: no length in {lengths} is long enough for {', '.join(skipped)}: no scores, "
          "no chart for them (use longer --lengths)", file=sys.stderr)
  if results["tasks"].get("niah", {}).get("grid"):
    results["plots"]["niah_heatmap"] = plots.niah_heatmap(
        results["tasks"]["niah"]["grid"], os.path.join(args.out, "niah_heatmap.png"),
        f"NIAH: {label}")
  if gen:
    results["plots"]["accuracy_vs_length"] = plots.accuracy_vs_length(
        gen, os.path.join(args.out, "accuracy_vs_length.png"), f"accuracy vs length: {label}")
  if "ppl" in results["tasks"]:
    results["plots"]["perplexity_vs_position"] = plots.perplexity_vs_position(
        results["tasks"]["ppl"]["buckets"], os.path.join(args.out, "perplexity_vs_position.png"),
        f"perplexity by position: {label}")
  _write(results, args.out)
  print(summary_table(results), file=sys.stdout)
  written = [os.path.join(args.out, "results.json")] + [p for p in results["plots"].values()
                                                        if isinstance(p, str)]
  print(f"eval: results written to {', '.join(written)}", file=sys.stderr)
  return results


def overall_progress(done: int, names: list[str], lengths: list[int], elapsed: float) -> str:
  """``eval: task 2/4 (niah); 12s elapsed, overall ETA ~25s`` (finished tasks' mean time)."""
  head = f"eval: task {done + 1}/{len(names)} ({names[done]}); {elapsed:.0f}s elapsed"
  if not done:
    return head + ", overall ETA after the first task"
  return head + f", overall ETA ~{elapsed / done * (len(names) - done):.0f}s"


def _write(results: dict, out: str) -> None:
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)


def summary_table(results: dict) -> str:
  """Task x length scores (generation tasks) and ppl by length."""
  lengths = [str(L) for L in results["lengths"]]
  lines = ["task".ljust(18) + "".join(L.rjust(9) for L in lengths) + "     mean"]
  for name, r in results["tasks"].items():
    if "by_length" in r:
      cells = "".join((f"{r['by_length'][L]:9.1f}" if L in r["by_length"] else " " * 9)
                      for L in lengths)
      lines.append(name.ljust(18) + cells + f"{r['mean']:9.1f}")
    else:
      cells = "".join(f"{r['ppl_at_length'][L]:9.3f}" for L in lengths)
      lines.append("ppl (first L tok)".ljust(18) + cells + f"{r['ppl']:9.3f}")
  return "\n".join(lines)
