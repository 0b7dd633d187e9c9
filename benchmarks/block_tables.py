"""Times the analytic block-table builder; prints one JSON object.

  python -m benchmarks.block_tables                       # 128K and 1M tokens, block 128
  python -m benchmarks.block_tables --lengths 131072 --specs full --repeats 3

For each (spec, length): ``build_s`` (compact CSR tables, forward and transposed, what the kernels
use), ``padded_s`` (additionally materialising the padded ``[rows, max_width]`` views of
docs/architecture.md section 3), visited tile pairs and padded widths. Each timing is the best of
``--repeats`` cold builds (the table cache is cleared before each).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

from pallas_kernels import block_tables as bt_lib
from pallas_kernels.spec import AttentionSpec

DEFAULT_SPECS = ("sink_window:64:4096", "strided:16:8", "full")
DEFAULT_LENGTHS = (131072, 1048576)


def time_one(spec: AttentionSpec, length: int, repeats: int) -> dict:
  build, padded = [], []
  for _ in range(repeats):
    bt_lib._build.cache_clear()  # pylint: disable=protected-access
    t0 = time.perf_counter()
    bt = bt_lib.block_tables(spec, length)
    t1 = time.perf_counter()
    _ = (bt.fwd_idx, bt.fwd_partial, bt.bwd_idx, bt.bwd_partial)
    t2 = time.perf_counter()
    build.append(t1 - t0)
    padded.append(t2 - t0)
  return {"spec": str(spec), "tokens": length, "build_s": round(min(build), 4),
          "padded_s": round(min(padded), 4), "visited_tiles": bt.n_visited,
          "partial_tiles": bt.n_partial, "n_q_blocks": bt.n_q_blocks, "max_fwd": bt.max_fwd,
          "max_bwd": bt.max_bwd}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS),
                 help="pattern strings, e.g. full sink_window:64:4096 strided:16:8@64")
  p.add_argument("--lengths", nargs="+", type=int, default=list(DEFAULT_LENGTHS))
  p.add_argument("--block", type=int, default=128, help="block unless the spec says @BLOCK")
  p.add_argument("--repeats", type=int, default=1)
  args = p.parse_args(argv)
  results = [time_one(AttentionSpec.parse(s, block=args.block), n, args.repeats)
             for n in args.lengths for s in args.specs]
  report = {"benchmark": "block_tables", "date": datetime.date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "results": results}
  print(json.dumps(report, indent=1))
  return report


if __name__ == "__main__":
  main()
