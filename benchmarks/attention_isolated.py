"""One attention forward, timed alone, against a second copy of the code: an A/B check.

``benchmarks/attention.py`` times many cells in one process, so a cell's number also depends on what
ran before it. This script times only the sink+window forward (B=1, H=32, D=128, bf16,
``sink_window:64:4096``) through ``pallas_kernels.api.attention`` with ``backend="pallas_gpu"`` and
``"auto"``, from the tree at ``--root`` (e.g. an older commit unpacked with ``git archive``), and
writes each compiled HLO so two trees can be diffed. Run it once per tree, alternating:

  python3 benchmarks/attention_isolated.py --root OLD_TREE --tag before --out DIR --length 65536
  python3 benchmarks/attention_isolated.py --root .        --tag after  --out DIR --length 65536

Prints, per backend, 5 rounds of (median of 10 individually synchronised calls) and
(20 back-to-back calls, one synchronisation, mean), in ms. Needs a CUDA GPU.
"""

import argparse
import functools
import os
import statistics
import sys
import time


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", required=True, help="repository tree whose pallas_kernels to import")
  p.add_argument("--tag", required=True, help="name of this tree in the output")
  p.add_argument("--out", required=True, help="directory for the compiled HLO text")
  p.add_argument("--length", type=int, default=65536)
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args(argv)
  sys.path.insert(0, os.path.abspath(args.root))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pallas_kernels import api  # pylint: disable=g-import-not-at-top
  from pallas_kernels.spec import AttentionSpec  # pylint: disable=g-import-not-at-top
  spec = AttentionSpec.sink_window(64, 4096)
  L = args.length
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(x, (1, L, 32, 128), jnp.bfloat16) for x in ks)
  fns = {b: jax.jit(functools.partial(api.attention, spec=spec, backend=b))
         for b in ("pallas_gpu", "auto")}
  os.makedirs(args.out, exist_ok=True)
  for b, f in fns.items():
    with open(os.path.join(args.out, f"{args.tag}_{b}_{L}.hlo.txt"), "w") as fh:
      fh.write(f.lower(q, k, v).compile().as_text())
    jax.block_until_ready(f(q, k, v))
  res = {b: {"sync_each": [], "b2b": []} for b in fns}
  for _ in range(args.rounds):
    for b, f in fns.items():
      ts = []
      for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(f(q, k, v))
        ts.append(time.perf_counter() - t0)
      res[b]["sync_each"].append(statistics.median(ts) * 1e3)
      t0 = time.perf_counter()
      for _ in range(20):
        o = f(q, k, v)
      jax.block_until_ready(o)
      res[b]["b2b"].append((time.perf_counter() - t0) / 20 * 1e3)
  for b in fns:
    print(args.tag, L, b, "sync_each ms", [round(x, 3) for x in res[b]["sync_each"]],
          "b2b ms", [round(x, 3) for x in res[b]["b2b"]], flush=True)


if __name__ == "__main__":
  main()
