r"""Serving benchmark on one GPU: LongGen hybrid KV cache against all-full attention.

Run from the repository root (one H100, under 9 minutes):

  python3 benchmarks/serving.py --out $OUT/serving.json
  python3 benchmarks/serving.py --quick --out /tmp/serving_quick.json     # CPU smoke test (tiny)

Model: Llama-2-7B shaped (d 4096, 32 heads = 32 KV heads, head_dim 128, ffn 11008, vocab 32000)
cut to 6 layers, random bf16 weights (timings do not depend on the values), the same weights for
both models:
  hybrid   S S F F S S: two full layers in the middle, sink 64 + window 4096 elsewhere (LongGen)
  full     six full-attention layers (the baseline)

Per model and context length (32K, 64K, 128K):
  * batch 1: prefill latency of one prompt and decode tokens/s (``--decode_steps`` greedy steps
    right after the prefill). Prefill is one-shot when batch x length <= ``--one_shot_tokens``
    (131072: the whole prompt goes through the fused attention kernels), else chunked with
    ``--prefill_tokens`` tokens per chunk over all rows (bounded activations; the chunks' reads of
    the full layers' cache go through the XLA flash loop of ``pallas_kernels.decode``);
  * the largest batch that fits: powers of two are tried, starting at the analytic estimate,
    each try allocating the cache and running one decode step, an out-of-memory error meaning
    "does not fit"; then decode tokens/s at that batch (cache filled synthetically: decode cost
    does not depend on the values) and, while the time budget lasts, the prefill latency of the
    whole batch (one-shot or chunked as for batch 1);
  * KV bytes of the cache the engine allocates for one row at that length (+ decode steps) and
    the analytic value ``sum(spec.kv_budget(L)) x 2 x Hkv x Dh x 2 bytes``;
  * on a GPU, batch-1 decode at the longest length with the Pallas split-K decode kernel
    (``decode_impl="pallas_gpu"``) next to the XLA one.

The prefill's attention goes through ``pallas_kernels.attention`` with ``--backend`` (default
``auto``: FA4 where it is installed, else our kernels); each prefill row records the backend
every layer pattern got (``prefill_backends``). ``--backend pallas_gpu`` measures ours beside it;
``--without pallas_gpu_mosaic`` runs ``auto`` as it chose before that row (cuDNN for full layers).

Timing: every compiled program is warmed up first (a 2-chunk prompt compiles both prefill
programs, 2 decode steps compile the step), then one synchronised prefill and a timed run of
decode steps without host syncs (``block_until_ready`` at the end). Cells run in priority order
(batch 1 for every row, then max-batch decode, then max-batch prefill) against a time budget
(``--budget_s``); a cell that would not fit, errors or OOMs becomes a row with ``status`` and a
note. Prints a table and writes JSON (``--out``). Imports only ``longgen_jax.model``,
``longgen_jax.infer`` and ``pallas_kernels`` (no grain / ml_collections).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from longgen_jax.infer import slots  # noqa: E402  pylint: disable=wrong-import-position
from longgen_jax.infer.cache import HybridCache, analytic_kv_bytes  # noqa: E402  pylint: disable=wrong-import-position
from longgen_jax.infer.engine import Engine  # noqa: E402  pylint: disable=wrong-import-position
from longgen_jax.infer.forward import chunk_attention_shapes  # noqa: E402  pylint: disable=wrong-import-position
from longgen_jax.infer.report import nbytes  # noqa: E402  pylint: disable=wrong-import-position
from longgen_jax.model.config import ModelConfig  # noqa: E402  pylint: disable=wrong-import-position
from longgen_jax.model.layers import layer_param_shapes  # noqa: E402  pylint: disable=wrong-import-position
from pallas_kernels.api import backends_removed, parse_without, select_backend, unknown_backend  # noqa: E402  pylint: disable=wrong-import-position

GIB = 2.0 ** 30


# ----------------------------------------------------------------------------- setup
def model_configs(quick: bool) -> dict[str, ModelConfig]:
  """The hybrid and the all-full config (same shapes, same weights)."""
  if quick:  # 3 layers (S F S) keep the CPU compile short
    base = dict(vocab_size=256, d_model=64, n_layers=3, n_heads=4, n_kv_heads=4, ffn_dim=128,
                max_seq_len=1024, dtype="float32", param_dtype="float32")
    sparse, full, n_full = "sink_window:4:64@16", "full@16", 1
  else:
    base = dict(vocab_size=32000, d_model=4096, n_layers=6, n_heads=32, n_kv_heads=32,
                ffn_dim=11008, max_seq_len=131072, dtype="bfloat16", param_dtype="bfloat16")
    sparse, full, n_full = "sink_window:64:4096", "full", 2
  hybrid = ModelConfig.from_dict(dict(base, layout="longgen", sparse=sparse, full=full,
                                      n_full=n_full))
  allfull = ModelConfig.from_dict(dict(base, layout="full", full=full))
  return {"hybrid": hybrid, "full": allfull}


def _normal(key, shape, dtype):
  return (jax.random.normal(key, shape, jnp.float32) * 0.02).astype(dtype)


_normal = jax.jit(_normal, static_argnums=(1, 2))


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
  """Canonical parameters ~ N(0, 0.02^2) made on the device in the compute dtype (norms: 1)."""
  dt = jnp.dtype(cfg.dtype)
  keys = jax.random.split(jax.random.PRNGKey(seed), cfg.n_layers + 2)
  params = {"embed": _normal(keys[0], (cfg.vocab_size, cfg.d_model), dt),
            "final_norm": jnp.ones((cfg.d_model,), jnp.float32),
            "lm_head": _normal(keys[1], (cfg.d_model, cfg.vocab_size), dt), "layers": []}
  for i in range(cfg.n_layers):
    lk = jax.random.split(keys[i + 2], 9)
    params["layers"].append({
        name: (jnp.ones(shape, jnp.float32) if name.endswith("norm") else
               _normal(lk[j], tuple(shape), dt))
        for j, (name, shape) in enumerate(layer_param_shapes(cfg).items())})
  return params


def is_oom(e: BaseException) -> bool:
  text = f"{type(e).__name__}: {e}"
  return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                 "OOM", "Resource exhausted"))


def free_memory() -> None:
  gc.collect()


def device_bytes() -> int | None:
  """Usable device memory (bytes), when the backend reports it."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001
    return None
  return stats.get("bytes_limit")


# ----------------------------------------------------------------------------- one model
class Bench:
  """Runs the cells of one model (engine per batch: the chunk length depends on the batch)."""

  def __init__(self, name, cfg, params, args, deadline):
    self.name, self.cfg, self.params, self.args, self.deadline = name, cfg, params, args, deadline
    self.rng = np.random.default_rng(0)
    self.warm: set = set()        # (batch, chunk, capacity, one-shot length) already compiled

  def engine(self, batch: int, length: int = 0) -> Engine:
    """One-shot prefill (the whole prompt through the fused attention kernels) when
    ``batch * length <= one_shot_tokens``, else chunks of ``prefill_tokens / batch`` per row."""
    if 0 < batch * length <= self.args.one_shot_tokens:
      chunk = length
    else:
      chunk = max(self.args.min_chunk, self.args.prefill_tokens // batch)
    return Engine(self.cfg, self.params, prefill_chunk=chunk, cast=False, per_octave=64,
                  backend=self.args.backend, decode_impl=self.args.decode_impl)

  def prefill_backends(self, eng: Engine, batch: int, length: int) -> dict:
    """{layer spec: attention backend} of the prefill's first chunk (later chunks of a chunked
    prefill have offsets, which some backends refuse: those are listed under ``later:``)."""
    cfg, chunk = self.cfg, min(length, eng.prefill_chunk)
    dtype = jnp.dtype(cfg.dtype)
    out = {}
    for spec in dict.fromkeys(eng.specs):
      for tag, first in (("", True), ("later:", False)) if length > chunk else (("", True),):
        shapes = chunk_attention_shapes(cfg, batch, chunk, first=first)
        out[tag + str(spec)] = select_backend(spec, shapes, dtype, backend=self.args.backend)
    return out

  def capacity(self, length: int) -> int:
    return -(-(length + self.args.decode_steps + 2) // 128) * 128

  def prompts(self, batch: int, length: int) -> list:
    return [self.rng.integers(0, self.cfg.vocab_size, length).tolist() for _ in range(batch)]

  def kv(self, length: int) -> dict:
    eng = self.engine(1)
    cache = eng.abstract_cache(1, self.capacity(length))
    measured = sum(nbytes(lc.k) + nbytes(lc.v) for lc in cache.layers)
    pos = sum(nbytes(lc.pos) for lc in cache.layers if lc.pos is not None)
    analytic = analytic_kv_bytes(eng.specs, length, 1, self.cfg.n_kv_heads, self.cfg.head_dim,
                                 self.cfg.dtype)
    return {"model": self.name, "length": length, "capacity": cache.capacity,
            "kv_bytes": int(measured), "pos_bytes": int(pos), "analytic_kv_bytes": analytic}

  def prefill_decode(self, batch: int, length: int, capacity: int, decode: bool) -> dict:
    """Warm-up (compile), then one timed prefill and (optionally) timed decode steps."""
    eng = self.engine(batch, length)
    chunk = eng.prefill_chunk if length > eng.prefill_chunk else None
    key = (batch, eng.prefill_chunk, capacity, None if chunk else length)
    prompts = self.prompts(batch, length)
    if key not in self.warm:  # compile: a 2-chunk prompt (first + later chunk programs) or,
      warm = self.prompts(batch, 2 * chunk) if chunk else prompts   # one-shot, the prompt
      logits, cache = eng.prefill(warm, capacity=capacity)
      jax.block_until_ready(logits)
      del logits, cache
      free_memory()
      self.warm.add(key)
    t0 = time.perf_counter()
    logits, cache = eng.prefill(prompts, capacity=capacity)
    jax.block_until_ready(logits)
    prefill_s = time.perf_counter() - t0
    row = {"prefill_s": prefill_s, "prefill_tok_s": batch * length / prefill_s,
           "prefill_chunk": eng.prefill_chunk,
           "prefill_backends": self.prefill_backends(eng, batch, length)}
    if decode:
      row.update(self.decode_loop(eng, cache, logits, batch, length))
    del logits, cache
    free_memory()
    return row

  def decode_loop(self, eng: Engine, cache: HybridCache, logits, batch: int, length: int) -> dict:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    lengths = np.full(batch, length, np.int64)
    for _ in range(2):  # compile + warm up
      tok, _, cache = eng.decode(cache, tok, lengths=lengths)
      lengths = lengths + 1
    jax.block_until_ready(tok)
    n = self.args.decode_steps
    t0 = time.perf_counter()
    for _ in range(n):
      tok, _, cache = eng.decode(cache, tok, lengths=lengths)
      lengths = lengths + 1
    jax.block_until_ready(tok)
    dt = time.perf_counter() - t0
    return {"decode_steps": n, "decode_ms_per_step": 1e3 * dt / n,
            "decode_tok_s": batch * n / dt}

  def synthetic_cache(self, eng: Engine, batch: int, length: int) -> HybridCache:
    """A cache shaped and tagged as if ``length`` tokens had been prefilled (values zero)."""
    cache = eng.new_cache(batch, self.capacity(length))
    layers = []
    for lc in cache.layers:
      if lc.pos is not None:
        pos = slots.bulk_positions(lc.spec, lc.capacity, 0, length,
                                   np.full(batch, length), xp=np)
        lc = lc.__class__(lc.k, lc.v, jnp.asarray(pos, jnp.int32), lc.spec, lc.kind,
                          lc.capacity)
      layers.append(lc)
    return HybridCache(tuple(layers), jnp.full((batch,), length, jnp.int32), cache.page_table)

  def try_batch(self, batch: int, length: int) -> bool:
    """Allocates a ``batch`` cache and runs a decode step; False on out-of-memory."""
    cache = None
    try:
      eng = self.engine(batch)
      cache = self.synthetic_cache(eng, batch, length)
      tok, _, cache = eng.decode(cache, jnp.zeros((batch,), jnp.int32),
                                 lengths=np.full(batch, length))
      jax.block_until_ready(tok)
      return True
    except Exception as e:  # noqa: BLE001
      if is_oom(e):
        return False
      raise
    finally:
      del cache
      free_memory()

  def max_batch(self, length: int) -> tuple[int, list]:
    """Largest power-of-two batch whose cache + decode step fits (tries logged)."""
    tries = []
    per_row = self.kv(length)["kv_bytes"] * 1.05
    limit = device_bytes()
    if limit:
      weights = sum(x.nbytes for x in jax.tree.leaves(self.params))
      est = max(1, int((0.85 * limit - weights) // per_row))
      b = 1 << (est.bit_length() - 1)
    else:
      b = 1
    b = max(1, min(b, self.args.max_batch))
    ok_b = 0
    while True:
      ok = self.try_batch(b, length)
      tries.append({"batch": b, "fits": ok})
      if ok:
        ok_b = b
        if b * 2 > self.args.max_batch or any(t["batch"] == b * 2 for t in tries):
          break
        b *= 2
      else:
        if b == 1 or any(t["batch"] == b // 2 and t["fits"] for t in tries):
          break
        b //= 2
    return ok_b, tries

  def decode_impl_cell(self, length: int, impl: str) -> dict:
    """Batch-1 decode throughput with another decode kernel (synthetic cache)."""
    eng = Engine(self.cfg, self.params, prefill_chunk=self.args.prefill_tokens, cast=False,
                 per_octave=64, backend=self.args.backend, decode_impl=impl)
    cache = self.synthetic_cache(eng, 1, length)
    logits = jnp.zeros((1, self.cfg.vocab_size), jnp.float32)
    row = self.decode_loop(eng, cache, logits, 1, length)
    free_memory()
    return dict(row, decode_impl=impl)

  def max_batch_decode(self, batch: int, length: int) -> dict:
    eng = self.engine(batch)
    cache = self.synthetic_cache(eng, batch, length)
    logits = jnp.zeros((batch, self.cfg.vocab_size), jnp.float32)
    row = self.decode_loop(eng, cache, logits, batch, length)
    free_memory()
    return row


# ----------------------------------------------------------------------------- driver
def parse_lengths(text: str) -> list[int]:
  out = []
  for t in text.split(","):
    t = t.strip().lower()
    out.append(int(float(t[:-1]) * 1024) if t.endswith("k") else int(t))
  return out


CELLS = ("batch1", "maxbatch_decode", "decode_pallas", "maxbatch_prefill")


def parse_batches(text: str | None) -> dict[int, int]:
  """``"32k:16,128k:4"`` -> {32768: 16, 131072: 4} (batch per length, skipping the search)."""
  out = {}
  for item in (text or "").split(","):
    if not item.strip():
      continue
    length, sep, batch = item.partition(":")
    if not sep or not batch.strip().isdigit() or int(batch) < 1:
      raise ValueError(f"--batches item {item!r} is not LENGTH:BATCH (e.g. 128k:4)")
    out[parse_lengths(length)[0]] = int(batch)
  return out


def run(args) -> dict:
  t_start = time.perf_counter()
  deadline = t_start + args.budget_s
  cfgs = model_configs(args.quick)
  models = [m for m in args.models.split(",") if m]
  lengths = parse_lengths(args.lengths)
  params = random_params(cfgs["hybrid"], seed=0)
  jax.block_until_ready(params)
  out = {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
         "jax": jax.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
         "quick": args.quick, "lengths": lengths,
         "models": {m: [str(s) for s in cfgs[m].layers] for m in models},
         "config": {k: v for k, v in vars(args).items() if k != "out"},
         "rows": [], "kv": [], "notes": [
             "batch1: real prefill of random tokens, then greedy decode steps on its cache",
             "maxbatch_decode: cache filled synthetically (decode cost does not depend on values)",
             "prefill_s excludes compilation (programs are warmed up first)",
             "kv_bytes: K/V buffers the engine allocates for one row at length + decode steps "
             "(rounded to 128 positions); analytic: sum(spec.kv_budget(length)) x 2 x Hkv x Dh x "
             "itemsize"]}
  benches = {m: Bench(m, cfgs[m], params, args, deadline) for m in models}

  def left() -> float:
    return deadline - time.perf_counter()

  def cell(kind, model, batch, length, fn, min_left=0.0):
    row = {"model": model, "kind": kind, "batch": batch, "length": length}
    if left() < min_left:
      row.update(status="skipped", note=f"time budget ({left():.0f}s left, needs ~{min_left:.0f}s)")
    else:
      t0 = time.perf_counter()
      try:
        row.update(fn())
        row["status"] = "ok"
      except Exception as e:  # noqa: BLE001
        row["status"] = "oom" if is_oom(e) else "error"
        row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if row["status"] == "error" and args.verbose:
          traceback.print_exc()
      row["cell_s"] = time.perf_counter() - t0
      free_memory()
    out["rows"].append(row)
    print(format_row(row), flush=True)
    return row

  print(header(), flush=True)
  # 1. batch 1, every model and length (one capacity for all lengths: the prefill programs are
  #    compiled once per model; decode reads only a bucket of the longest length).
  cells = set(args.cells.split(","))
  fixed = parse_batches(args.batches)
  cap1 = benches[models[0]].capacity(max(lengths))
  for m in models:
    for L in lengths:
      out["kv"].append(benches[m].kv(L))
      if "batch1" in cells:
          cell("batch1", m, 1, L, lambda b=benches[m], L=L: b.prefill_decode(1, L, cap1, True),
             min_left=30)
  # 2. largest batch: search (or ``--batches``), then decode throughput.
  best: dict = {(m, L): fixed[L] for m in models for L in lengths if L in fixed}
  for m in models:
    for L in lengths:
      if "maxbatch_decode" not in cells:
        continue

      def search(b=benches[m], L=L, m=m):
        if L in fixed:
          return dict(b.max_batch_decode(fixed[L], L), tries=[], batch=fixed[L], note="--batches")
        bmax, tries = b.max_batch(L)
        best[(m, L)] = bmax
        if bmax < 1:
          raise RuntimeError("not even batch 1 fits")
        return dict(b.max_batch_decode(bmax, L), tries=tries, batch=bmax)
      cell("maxbatch_decode", m, None, L, search, min_left=30)
  # 2b. the Pallas split-K decode kernel against XLA's (batch 1, longest length; GPU only).
  if (args.decode_impl == "auto" and jax.default_backend() == "gpu"
      and "decode_pallas" in cells):
    for m in models:
      cell("batch1_decode_pallas", m, 1, max(lengths),
           lambda b=benches[m]: b.decode_impl_cell(max(lengths), "pallas_gpu"), min_left=40)
  # 3. largest batch prefill, while the budget lasts (estimated from the batch-1 latency).
  lat = {(r["model"], r["length"]): r.get("prefill_s") for r in out["rows"]
         if r["kind"] == "batch1" and r["status"] == "ok"}
  for m in models:
    for L in lengths:
      b = best.get((m, L), 0)
      if b <= 1 or "maxbatch_prefill" not in cells:
        continue
      slow = 4.0 if b * L > args.one_shot_tokens else 1.2   # chunked: XLA cache-part loop
      est = (lat.get((m, L)) or 0.0) * b * slow + 30.0
      cell("maxbatch_prefill", m, b, L,
           lambda bench=benches[m], b=b, L=L: bench.prefill_decode(
               b, L, bench.capacity(L), False), min_left=est)
  out["summary"] = summarize(out)
  out["elapsed_s"] = time.perf_counter() - t_start
  print(format_summary(out["summary"]), flush=True)
  print(f"elapsed {out['elapsed_s']:.0f}s", flush=True)
  return out


def summarize(out: dict) -> dict:
  """KV saving and hybrid / full speedups per length."""
  def get(kind, model, L, key):
    for r in out["rows"]:
      if r["kind"] == kind and r["model"] == model and r["length"] == L and r["status"] == "ok":
        return r.get(key)
    return None

  kv = {(k["model"], k["length"]): k for k in out["kv"]}
  s = {}
  for L in out["lengths"]:
    e = {}
    h, f = kv.get(("hybrid", L)), kv.get(("full", L))
    if h and f:
      e["kv_saving"] = 1 - h["kv_bytes"] / f["kv_bytes"]
      e["kv_saving_analytic"] = 1 - h["analytic_kv_bytes"] / f["analytic_kv_bytes"]
    for m in ("hybrid", "full"):
      xla, pal = get("batch1", m, L, "decode_tok_s"), get("batch1_decode_pallas", m, L,
                                                         "decode_tok_s")
      if xla and pal:
        e[f"pallas_over_xla_decode_{m}"] = pal / xla
    for key, kind, name in (("prefill_s", "batch1", "prefill_speedup_b1"),
                            ("decode_tok_s", "batch1", "decode_speedup_b1"),
                            ("decode_tok_s", "maxbatch_decode", "decode_throughput_ratio_max"),
                            ("batch", "maxbatch_decode", "max_batch_ratio")):
      hv, fv = get(kind, "hybrid", L, key), get(kind, "full", L, key)
      if hv and fv:
        e[name] = fv / hv if key == "prefill_s" else hv / fv
    s[str(L)] = e
  return s


def header() -> str:
  return (f"{'model':<7} {'cell':<17} {'len':>7} {'batch':>5} {'prefill s':>10} "
          f"{'prefill tok/s':>14} {'decode tok/s':>13} {'ms/step':>8}  status")


def format_row(r: dict) -> str:
  def f(key, fmt):
    v = r.get(key)
    return format(v, fmt) if isinstance(v, (int, float)) else "-"
  return (f"{r['model']:<7} {r['kind']:<17} {r['length']:>7} {str(r.get('batch') or '-'):>5} "
          f"{f('prefill_s', '10.3f'):>10} {f('prefill_tok_s', '14,.0f'):>14} "
          f"{f('decode_tok_s', '13,.1f'):>13} {f('decode_ms_per_step', '8.2f'):>8}  "
          f"{r.get('status')}{(' ' + r['note']) if r.get('note') else ''}")


def format_summary(s: dict) -> str:
  lines = ["length  KV saving (alloc / analytic)  prefill x (b1)  decode x (b1)  "
           "max batch x  decode tput x (max)"]
  for L, e in s.items():
    def g(k, fmt):
      return format(e[k], fmt) if k in e else "-"
    lines.append(f"{L:>6}  {g('kv_saving', '.1%'):>9} / {g('kv_saving_analytic', '.1%'):<16} "
                 f"{g('prefill_speedup_b1', '.2f'):>14} {g('decode_speedup_b1', '.2f'):>14} "
                 f"{g('max_batch_ratio', '.1f'):>12} {g('decode_throughput_ratio_max', '.2f'):>20}")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke test)")
  p.add_argument("--out", default=None, help="write the JSON results here")
  p.add_argument("--lengths", default=None, help="default 32k,64k,128k (quick: 256)")
  p.add_argument("--models", default="hybrid,full")
  p.add_argument("--decode_steps", type=int, default=None, help="timed decode steps (32)")
  p.add_argument("--prefill_tokens", type=int, default=None, help="tokens per prefill chunk "
                 "(all rows together; default 16384, quick 512)")
  p.add_argument("--min_chunk", type=int, default=None, help="smallest per-row chunk")
  p.add_argument("--one_shot_tokens", type=int, default=None, help="prefill one-shot when "
                 "batch x length <= this (default 131072; quick 256)")
  p.add_argument("--max_batch", type=int, default=None, help="largest batch tried (64; quick 2)")
  p.add_argument("--budget_s", type=float, default=None, help="time budget for starting new "
                 "cells (420 s; a started cell finishes)")
  p.add_argument("--decode_impl", default="auto")
  p.add_argument("--backend", default="auto", help="attention backend of the prefill "
                 "(pallas_kernels.attention; default auto: FA4 where installed, else ours)")
  p.add_argument("--without", default="", help="comma-separated backends taken out of the "
                 "registry for the run (e.g. pallas_gpu_mosaic: auto as it chose before that row)")
  p.add_argument("--cells", default=",".join(CELLS),
                 help=f"comma list of the cells to run, of {','.join(CELLS)}")
  p.add_argument("--batches", default=None, help="largest batch per length, e.g. "
                 "32k:16,64k:8,128k:4: skips the search (a previous run's result)")
  p.add_argument("--verbose", action="store_true")
  args = p.parse_args(argv)
  bad = set(args.cells.split(",")) - set(CELLS)
  if bad:
    p.error(f"unknown --cells {sorted(bad)}; known: {', '.join(CELLS)}")
  try:
    parse_batches(args.batches)
  except ValueError as e:
    p.error(str(e))
  problem = unknown_backend(args.backend)
  if problem:
    p.error(f"--backend: {problem}")
  without, problem = parse_without(args.without, args.backend)
  if problem:
    p.error(problem)
  q = args.quick
  defaults = dict(lengths="256" if q else "32k,64k,128k", decode_steps=2 if q else 32,
                  prefill_tokens=512 if q else 16384, min_chunk=64 if q else 1024,
                  one_shot_tokens=256 if q else 131072,
                  max_batch=2 if q else 64, budget_s=240.0 if q else 420.0)
  for k, v in defaults.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  with backends_removed(*without):
    out = run(args)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
