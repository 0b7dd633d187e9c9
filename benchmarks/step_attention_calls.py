"""Count the attention kernel calls XLA keeps in the compiled training step (compile only).

Compiles ``benchmarks/train_step.py``'s step (``build_step``, one document per row) for each ``--backends``
entry and counts the custom calls by target, in the module JAX lowers (``lowered_custom_calls``)
and in XLA's optimised HLO (``custom_calls``), plus XLA's temp-memory size.
With the layers scanned, a kernel called once per layer appears once per loop body: a forward
target counted more often than JAX lowered it means XLA made the copy (on an H100 its
dynamic-slice fusion cloned the FA4 forward callback into the residual stack's update,
docs/benchmarks.md 2026-12-06); more forward calls already in the lowered module mean JAX's remat
re-runs the forward.

  python benchmarks/step_attention_calls.py --seq_len 131072 --backends auto fa4

Writes each optimised HLO to ``--hlo_dir`` when given. ``--assume_fa4`` compiles the ``fa4`` step
where flash-attn-4 is not installed (its Python callback only runs when the step runs, never here).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def count_targets(hlo_text: str) -> dict[str, int]:
  return dict(collections.Counter(re.findall(r'custom_call_target="([^"]+)"', hlo_text)))


def count_lowered_targets(mlir_text: str) -> dict[str, int]:
  """Custom calls in the module JAX hands XLA (before any XLA pass): StableHLO text."""
  found = re.findall(r'stablehlo\.custom_call @([\w$.\-]+)\(', mlir_text)
  found += re.findall(r'call_target_name = "([^"]+)"', mlir_text)
  return dict(collections.Counter(found))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--layout", default="full", choices=("full", "hybrid"))
  ap.add_argument("--seq_len", type=int, default=131072)
  ap.add_argument("--remat", default="save_attention")
  ap.add_argument("--backends", nargs="+", default=["auto"])
  ap.add_argument("--tiny", action="store_true", help="toy widths (CPU smoke test)")
  ap.add_argument("--hlo_dir", default="")
  ap.add_argument("--assume_fa4", action="store_true",
                  help="treat flash-attn-4 as installed (compile only; nothing calls it)")
  args = ap.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  import train_step  # pylint: disable=import-outside-toplevel
  if args.assume_fa4:
    from pallas_kernels.backends import fa4  # pylint: disable=import-outside-toplevel
    fa4._import_problem.cache_clear()
    fa4._import_problem = lambda: None  # pylint: disable=protected-access
  from pallas_kernels import api  # pylint: disable=import-outside-toplevel
  for backend in args.backends:
    problem = api.unknown_backend(backend)
    if problem:
      ap.error(f"--backends: {problem}")

  L, results = args.seq_len, {}
  for backend in args.backends:
    _, step, state, rest, batch, _ = train_step.build_step(args.layout, L, args.remat, args.tiny,
                                                           segment_ids=False, backend=backend)
    lowered = step.lower(state, rest, batch)
    compiled = lowered.compile()
    text = compiled.as_text()
    mem = compiled.memory_analysis()
    results[backend] = {"custom_calls": count_targets(text),
                        "lowered_custom_calls": count_lowered_targets(lowered.as_text()),
                        "temp_gib": getattr(mem, "temp_size_in_bytes", 0) / 2 ** 30}
    print(f"{backend}: {json.dumps(results[backend])}", flush=True)
    if args.hlo_dir:
      os.makedirs(args.hlo_dir, exist_ok=True)
      with open(os.path.join(args.hlo_dir, f"step_{args.layout}_{L}_{backend}.hlo.txt"), "w",
                encoding="utf-8") as f:
        f.write(text)
    del state, rest, batch, lowered, compiled
  print("JSON " + json.dumps({"layout": args.layout, "seq_len": L, "remat": args.remat,
                              "device": jax.devices()[0].device_kind, "results": results}))


if __name__ == "__main__":
  main()
