"""The embedding lookup's backward (a scatter-add into the table) against the token distribution.

Suspect for the replication's data-dependent step time (docs/replication.md "Still open"): the
lookup's gradient is a scatter-add with one atomic per token and feature, so tokens that repeat
(a byte vocabulary on indented code: spaces) serialise on a few rows. This times the forward +
backward of the lookup alone, per formulation, for uniform tokens, skewed tokens and real text
bytes, with ``bench_timing.time_cell`` (back-to-back calls, median of loops):

  take_bf16   jnp.take(table.astype(bf16), tokens)   (the model's formulation: bf16 scatter-add)
  take_f32    jnp.take(table, tokens).astype(bf16)   (fp32 scatter-add)
  onehot      one_hot(tokens, V, bf16) @ table.astype(bf16)   (a matmul; small vocabularies)
  sorted      custom VJP: argsort tokens, segment_sum with indices_are_sorted (no contention)

  python3 benchmarks/embed_grad.py --rows 128 --seq 1024 --vocab 264 --dim 512
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_timing import time_cell  # noqa: E402  pylint: disable=wrong-import-position


def _sorted_take(table, tokens):
  @jax.custom_vjp
  def f(table):
    return jnp.take(table, tokens, axis=0)

  def fwd(table):
    return f(table), None

  def bwd(_, g):
    flat = tokens.reshape(-1)
    order = jnp.argsort(flat)
    gs = g.reshape(-1, g.shape[-1])[order].astype(jnp.float32)
    d = jax.ops.segment_sum(gs, flat[order], num_segments=table.shape[0], indices_are_sorted=True)
    return (d.astype(table.dtype),)

  f.defvjp(fwd, bwd)
  return f(table)


FORMS = {
    "take_f32": lambda t, x: jnp.take(t, x, axis=0).astype(jnp.bfloat16),
    "take_bf16": lambda t, x: jnp.take(t.astype(jnp.bfloat16), x, axis=0),
    "onehot": lambda t, x: jax.nn.one_hot(x, t.shape[0], dtype=jnp.bfloat16) @ t.astype(
        jnp.bfloat16),
    "sorted": lambda t, x: _sorted_take(t.astype(jnp.bfloat16), x),
}


def token_sets(rows, seq, vocab, seed=0):
  rng = np.random.default_rng(seed)
  n = rows * seq
  sets = {"uniform": rng.integers(0, vocab, n)}
  skew = rng.integers(0, vocab, n)
  skew[rng.random(n) < 0.3] = 32
  sets["30pct_one_id"] = skew
  text = b""
  for p in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "**", "*.py"),
                        recursive=True)):
    text += open(p, "rb").read()
    if len(text) >= n:
      break
  sets["python_bytes"] = np.frombuffer(text[:n], np.uint8).astype(np.int64) % vocab
  return {k: jnp.asarray(v.reshape(rows, seq), jnp.int32) for k, v in sets.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=128)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=264)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--loop-s", type=float, default=0.3)
  p.add_argument("--out", default="")
  a = p.parse_args()
  table = jax.random.normal(jax.random.PRNGKey(0), (a.vocab, a.dim), jnp.float32)
  w = jax.random.normal(jax.random.PRNGKey(1), (a.rows, a.seq, a.dim), jnp.bfloat16)
  rows = []
  ref = None
  for tname, toks in token_sets(a.rows, a.seq, a.vocab).items():
    for fname, form in FORMS.items():
      step = jax.jit(jax.grad(lambda t, x, form=form: jnp.sum(
          (form(t, x) * w).astype(jnp.float32))))
      g = step(table, toks)
      if fname == "take_f32":
        ref = g
      r = time_cell(lambda: step(table, toks), jax.block_until_ready, target_s=a.loop_s)
      err = None if ref is None else float(jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref))
      rows.append(dict(tokens=tname, form=fname, ms=r.ms, rel_err_vs_take_f32=err))
      print(f"{tname:>14} {fname:>10}: {r.ms:8.3f} ms", flush=True)
    ref = None
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump({"args": vars(a), "device": jax.devices()[0].device_kind, "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()
