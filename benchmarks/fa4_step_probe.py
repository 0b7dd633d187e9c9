"""Where the training step's attention time goes with the ``fa4`` backend (GPU, extra ``fa4``).

Runs ``benchmarks/train_step.py``'s step in this process with ``attention_backend="fa4"`` and
wraps FA4's two entry points (``flash_attn.cute.interface._flash_attn_fwd`` / ``_bwd``): CUDA
events around each call on XLA's stream (inside the buffer callback) and the host time spent in
it. Prints, per timed step: how many forward and backward calls ran, their GPU time and host time.
A forward count above the number of layers means the forward is re-run in the backward pass.

  python benchmarks/fa4_step_probe.py --layout full --seq_len 131072

The event time includes any GPU idle time between the start event and the kernel launch (host
slower than the GPU), so a large host time shows up there too. Warm-up calls (which compile FA4's
kernels) are left out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--layout", default="full", choices=("full", "hybrid"))
  ap.add_argument("--seq_len", type=int, default=131072)
  ap.add_argument("--remat", default="save_attention")
  ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
  ap.add_argument("--json_out", default="")
  args = ap.parse_args()
  try:
    import flash_attn.cute.interface as fa4_iface  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    sys.exit(f"fa4_step_probe: flash-attn-4 is not importable ({e}); pip install -e '.[fa4]'")
  import train_step  # pylint: disable=import-outside-toplevel

  calls = []

  def wrap(kind, fn):
    @functools.wraps(fn)       # FA4 keeps its compile cache on the function object
    def timed(*a, **kw):
      start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      t0 = time.perf_counter()
      start.record()
      out = fn(*a, **kw)
      end.record()
      calls.append((kind, start, end, time.perf_counter() - t0))
      return out
    return timed

  fa4_iface._flash_attn_fwd = wrap("fwd", fa4_iface._flash_attn_fwd)
  fa4_iface._flash_attn_bwd = wrap("bwd", fa4_iface._flash_attn_bwd)
  r = train_step.run_one(args.layout, args.seq_len, args.remat, args.steps, 0.0,
                         segment_ids=False, backend="fa4")
  torch.cuda.synchronize()
  runs = args.steps + 1
  if not calls or len(calls) % runs:
    sys.exit(f"fa4_step_probe: {len(calls)} FA4 calls over {runs} step runs; expected a multiple")
  per_run = len(calls) // runs
  timed_calls = calls[per_run:]                      # drop the warm-up step's calls
  per_step = {}
  for kind, start, end, host_s in timed_calls:
    d = per_step.setdefault(kind, {"calls": 0, "gpu_ms": 0.0, "host_ms": 0.0})
    d["calls"] += 1
    d["gpu_ms"] += start.elapsed_time(end)
    d["host_ms"] += host_s * 1e3
  for d in per_step.values():
    for k in d:
      d[k] /= args.steps
  out = {"layout": args.layout, "seq_len": args.seq_len, "remat": args.remat,
         "n_layers": train_step.model_config(args.layout, args.seq_len, args.remat).n_layers,
         "step_s": r["step_s"], "mfu": r["mfu"], "peak_mem_gib": r["peak_mem_gib"],
         "device": r["device"], "jax": r["jax"], "per_step": per_step}
  for kind, d in sorted(per_step.items()):
    print(f"{kind}: {d['calls']:.0f} calls/step, GPU {d['gpu_ms']:.1f} ms/step "
          f"({d['gpu_ms'] / d['calls']:.1f} ms/call), host {d['host_ms']:.1f} ms/step")
  print(f"step {r['step_s']:.3f} s ({out['n_layers']} layers)")
  print("JSON " + json.dumps(out), flush=True)
  if args.json_out:
    with open(args.json_out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
