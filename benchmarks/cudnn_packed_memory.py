"""Compile-only memory of cuDNN packed (segment ids) attention fwd+bwd, against the unpacked call.

  python3 benchmarks/cudnn_packed_memory.py --out $OUT/cudnn_packed_memory.json

For each length T and static segment count M: XLA's temp bytes of ``jax.grad`` through
``cudnn.cudnn_attention`` (B=1, H=32, D=128, bf16), from ``compiled.memory_analysis()``
(nothing runs). Shows how cuDNN's packed layout sizes its buffers by B*M segment slots of length T.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from pallas_kernels.backends import cudnn  # pylint: disable=wrong-import-position
from pallas_kernels.spec import AttentionSpec  # pylint: disable=wrong-import-position


def temp_gib(T, M, spec, H=32, D=128):
  x = jax.ShapeDtypeStruct((1, T, H, D), jnp.bfloat16)
  seg = None if M is None else jax.ShapeDtypeStruct((1, T), jnp.int32)

  def loss(q, k, v, s):
    kw = {} if M is None else dict(segment_ids=s, max_segments=M)
    return jnp.sum(cudnn.cudnn_attention(q, k, v, spec, **kw).astype(jnp.float32))
  c = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, seg).compile()
  return c.memory_analysis().temp_size_in_bytes / 2**30


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
  p.add_argument("--segments", type=int, nargs="+", default=[2, 8, 64])
  p.add_argument("--out", default="")
  a = p.parse_args()
  rows = []
  for spec in (AttentionSpec.full(), AttentionSpec.sink_window(64, 4096)):
    for T in a.lengths:
      for M in [None] + a.segments:
        try:
          r = dict(spec=str(spec), T=T, M=M, temp_gib=round(temp_gib(T, M, spec), 3))
        except Exception as e:  # pylint: disable=broad-except
          r = dict(spec=str(spec), T=T, M=M, error=str(e).splitlines()[0][:200])
        print(json.dumps(r), flush=True)
        rows.append(r)
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()
