"""Compile-only memory of cuDNN packed (segment ids) attention fwd+bwd, against the unpacked call.

  python3 benchmarks/cudnn_packed_memory.py --out $OUT/cudnn_packed_memory.json
  # the replication study's extension shapes (issue 11's OOM under auto): 9 stacked calls
  python3 benchmarks/cudnn_packed_memory.py --batch 8 --heads 8 --head-dim 64 --layers 9 \
      --lengths 16384 --segments 2 8 32 --window 512 --sink 64 --block 64

For each length T and static segment count M: XLA's temp bytes of ``jax.grad`` through
``cudnn.cudnn_attention`` (default B=1, H=32, D=128, bf16), from ``compiled.memory_analysis()``
(nothing runs). Shows how cuDNN's packed layout sizes its buffers by B*M segment slots of length T.
``--layers N`` chains N calls (each output is the next call's query, nothing rematerialised), to
see whether the per-call workspaces of a stack of layers add up or are reused. M=None rows are the
unpacked call (no segment ids).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from pallas_kernels.backends import cudnn, cudnn_packed  # pylint: disable=wrong-import-position
from pallas_kernels.spec import AttentionSpec  # pylint: disable=wrong-import-position


def temp_gib(T, M, spec, H=32, D=128, B=1, layers=1):
  x = jax.ShapeDtypeStruct((B, T, H, D), jnp.bfloat16)
  seg = None if M is None else jax.ShapeDtypeStruct((B, T), jnp.int32)

  def loss(q, k, v, s):
    kw = {} if M is None else dict(segment_ids=s, max_segments=M)
    for _ in range(layers):
      q = cudnn.cudnn_attention(q, k, v, spec, **kw)
    return jnp.sum(q.astype(jnp.float32))
  c = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, seg).compile()
  return c.memory_analysis().temp_size_in_bytes / 2**30


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
  p.add_argument("--segments", type=int, nargs="+", default=[2, 8, 64])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=32)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--layers", type=int, default=1, help="chained calls in one jax.grad")
  p.add_argument("--sink", type=int, default=64)
  p.add_argument("--window", type=int, default=4096)
  p.add_argument("--block", type=int, default=128)
  p.add_argument("--out", default="")
  a = p.parse_args()
  rows = []
  for spec in (AttentionSpec.full(a.block), AttentionSpec.sink_window(a.sink, a.window, a.block)):
    for T in a.lengths:
      for M in [None] + a.segments:
        try:
          gib = temp_gib(T, M, spec, H=a.heads, D=a.head_dim, B=a.batch, layers=a.layers)
          slot = cudnn_packed.packed_slot_bytes(a.batch, T, a.heads, a.head_dim) / 2**30
          r = dict(spec=str(spec), T=T, M=M, B=a.batch, H=a.heads, D=a.head_dim,
                   layers=a.layers, temp_gib=round(gib, 3),
                   slots_gib=None if M is None else round(M * slot, 3))
        except Exception as e:  # pylint: disable=broad-except
          r = dict(spec=str(spec), T=T, M=M, error=str(e).splitlines()[0][:200])
        print(json.dumps(r), flush=True)
        rows.append(r)
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                 "command": " ".join(sys.argv), "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()
