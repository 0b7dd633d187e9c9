"""Runs generation tasks and the perplexity task through the serving engine."""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np

from longgen_jax.eval import longtext
from longgen_jax.eval.errors import EvalError
from longgen_jax.eval.fit import TokenCounter
from longgen_jax.eval.progress import Progress
from longgen_jax.eval.registry import make_task
from longgen_jax.eval.tasks import Sample, Task


def encode(tok, text: str, add_bos: bool) -> list[int]:
  return ([tok.bos_id] if add_bos and tok.bos_id is not None else []) + list(tok.encode(text))


def task_rng(seed: int, name: str, length: int) -> np.random.Generator:
  """Independent, reproducible stream per (seed, task, length)."""
  return np.random.default_rng([seed, zlib.crc32(name.encode()), length])


def build_samples(name: str, lengths: Sequence[int], *, samples: int, depths: Sequence[float],
                  seed: int, tokenizer, add_bos: bool, task: Task | None = None) -> list[Sample]:
  """The task's samples: ``samples`` per length (per length and depth for depth tasks).
  ``task``: a task object to use instead of the registered task ``name``."""
  task = task or make_task(name)
  counter = TokenCounter(tokenizer)
  reserve = 1 if add_bos and tokenizer.bos_id is not None else 0
  out = []
  for L in lengths:
    rng = task_rng(seed, name, L)
    grid = list(depths) if task.uses_depth and depths else [None]
    for d in grid:
      for _ in range(samples):
        out.append(task.make(L, rng, counter, depth=d, reserve=reserve))
  return out


def run_generation(engine, tokenizer, add_bos: bool, name: str, lengths: Sequence[int], *,
                   samples: int, depths: Sequence[float], seed: int = 0, batch: int = 1,
                   stop_tokens: Sequence[int] = (), quiet: bool = False,
                   task: Task | None = None) -> dict:
  """Generates (greedy) for every sample and scores it. Returns per-sample records plus the
  mean score by length (and by length x depth for depth tasks). ``task``: a task object to run
  under ``name`` instead of the registered task of that name (e.g. a study's own probe)."""
  task = task or make_task(name)
  progress = Progress(name, len(lengths) * samples * (len(depths) if task.uses_depth and depths
                                                      else 1), quiet=quiet)
  records, skipped = [], {}
  per_length = progress.total // max(1, len(lengths))
  for L in lengths:
    try:
      todo = build_samples(name, [L], samples=samples, depths=depths, seed=seed,
                           tokenizer=tokenizer, add_bos=add_bos, task=task)
    except EvalError as e:
      skipped[str(L)] = str(e)
      progress.update(per_length, note=f"length {L}: skipped ({e})")
      continue
    scores = []
    for i in range(0, len(todo), max(1, batch)):
      chunk = todo[i:i + max(1, batch)]
      ids = [encode(tokenizer, s.prompt, add_bos) for s in chunk]
      for s, row in zip(chunk, ids):
        if len(row) + s.max_new_tokens > L:
          raise EvalError(f"{name}: prompt of {len(row)} tokens + {s.max_new_tokens} to generate "
                          f"exceeds length {L} (tokenizer mismatch?)")
      result = engine.generate(ids, max_new_tokens=max(s.max_new_tokens for s in chunk),
                               stop_tokens=stop_tokens)
      for s, row, gen in zip(chunk, ids, result.tokens):
        pred = tokenizer.decode(gen[:s.max_new_tokens])
        sc = task.score(pred, s)
        scores.append(sc)
        records.append({"length": L, "depth": s.depth, "score": sc, "answers": s.answers,
                        "prediction": pred[:300], "prompt_tokens": len(row),
                        **({"meta": s.meta} if s.meta else {})})
      progress.update(len(chunk), note=f"length {L}: mean {np.mean(scores):.1f}")
  out = summarize(name, records)
  if skipped:
    out["skipped"] = skipped
  return out


def summarize(name: str, records: list[dict]) -> dict:
  """``{"task", "by_length": {L: mean}, "grid": {L: {depth: mean}} (depth tasks), "samples"}``."""
  by_len: dict[int, list[float]] = {}
  grid: dict[int, dict[float, list[float]]] = {}
  for r in records:
    by_len.setdefault(r["length"], []).append(r["score"])
    if r["depth"] is not None:
      grid.setdefault(r["length"], {}).setdefault(round(r["depth"], 4), []).append(r["score"])
  out = {"task": name,
         "by_length": {str(L): float(np.mean(v)) for L, v in sorted(by_len.items())},
         "mean": float(np.mean([r["score"] for r in records])) if records else float("nan"),
         "samples": records}
  if grid and name in ("niah", "passkey"):
    out["grid"] = {str(L): {str(d): float(np.mean(v)) for d, v in sorted(g.items())}
                   for L, g in sorted(grid.items())}
  return out


def position_edges(length: int, marks: Sequence[int] = ()) -> list[int]:
  """Bucket edges: 0, powers of two from 64, every length in ``marks``, and ``length``."""
  edges = {0, length}
  p = 64
  while p < length:
    edges.add(p)
    p *= 2
  edges.update(m for m in marks if 0 < m < length)
  return sorted(edges)


def long_ids(tokenizer, add_bos: bool, n_tokens: int, seed: int) -> list[int]:
  """At least ``n_tokens`` ids of held-out chronicle (grows the text until it is long enough)."""
  chars = max(1024, n_tokens * 2)
  while True:
    ids = encode(tokenizer, longtext.chronicle(seed, chars), add_bos)
    if len(ids) >= n_tokens:
      return ids[:n_tokens]
    chars = int(chars * max(1.5, 1.1 * n_tokens / max(1, len(ids))))


def data_ids(path: str, tokenizer, add_bos: bool, n_tokens: int, samples: int,
             seed: int) -> list[list[int]]:
  """``samples`` documents of at least ``n_tokens`` ids (BOS included) from a prepared
  ArrayRecord directory (``python -m longgen_jax.data.prepare``), drawn in a seeded order."""
  from longgen_jax.data.config import normalize_source  # pylint: disable=import-outside-toplevel
  from longgen_jax.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from longgen_jax.data.sources import make_source  # pylint: disable=import-outside-toplevel
  try:
    source = make_source(normalize_source({"type": "arrayrecord", "path": path}, "--ppl_data",
                                          "ppl_data"))
  except DataError as e:
    raise EvalError(f"--ppl_data: {e}") from None
  bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
  out = []
  for i in np.random.default_rng(seed).permutation(len(source)):
    doc = np.asarray(source[int(i)])
    if len(bos) + len(doc) >= n_tokens:
      out.append(bos + doc[:n_tokens - len(bos)].astype(int).tolist())
      if len(out) == samples:
        return out
  raise EvalError(f"--ppl_data {path}: only {len(out)} of {len(source)} documents have "
                  f"{n_tokens} tokens; {samples} are needed (lower --ppl_samples or the length)")


def run_perplexity(engine, tokenizer, add_bos: bool, lengths: Sequence[int], *, samples: int = 1,
                   seed: int = 0, quiet: bool = False, data: str | None = None) -> dict:
  """Perplexity by position bucket, at the largest length, of the held-out chronicle or (with
  ``data``, a prepared ArrayRecord directory) of documents of a held-out split.

  One pass over ``max(lengths) + 1`` tokens per sample (the chunked, cached prefill path, so a
  ``kv_drop`` engine is scored with its dropped cache); buckets are [lo, hi) of positions; the
  ppl of the first ``L`` tokens is also given for every requested ``L``.
  """
  L = max(lengths)
  progress = Progress("ppl", samples, quiet=quiet)
  nll = np.zeros(L, np.float64)
  docs = data_ids(data, tokenizer, add_bos, L + 1, samples, seed) if data else None
  for s in range(samples):
    ids = docs[s] if docs else long_ids(tokenizer, add_bos, L + 1, seed + s)
    lp = engine.score(ids)
    if lp.shape[0] != L or not np.all(np.isfinite(lp)):
      raise EvalError(f"ppl: scoring returned {lp.shape[0]} values (want {L}) or non-finite ones")
    nll -= lp
    progress.update(1, note=f"{L} tokens: ppl {math.exp(-lp.mean()):.3f}")
  nll /= samples
  edges = position_edges(L, lengths)
  buckets = [{"lo": lo, "hi": hi, "tokens": hi - lo, "nll": float(nll[lo:hi].mean()),
              "ppl": float(math.exp(nll[lo:hi].mean()))} for lo, hi in zip(edges, edges[1:])]
  return {"task": "ppl", "length": L, "samples": samples, "data": data or "chronicle",
          "buckets": buckets,
          "ppl_at_length": {str(n): float(math.exp(nll[:n].mean())) for n in lengths},
          "ppl": float(math.exp(nll.mean()))}
