"""Markdown tables from ``benchmarks/attention.py`` JSON files: each row against FlashAttention-4.

  python3 benchmarks/attention_report.py benchmarks/results/attention_issue14_*_2026-12-04.json

For every (pattern, length, KV heads) it prints each implementation's useful TFLOP/s, forward /
forward+backward, its ratio to the ``flex_fa4`` row of the same cell and its share of a matmul
ceiling (``--ceiling``, default 790 TFLOP/s: bf16 matmuls measured on the H200). When several
files hold the same cell, the later file wins. ``--rename OLD=NEW`` relabels an implementation
(e.g. runs whose ``pallas_gpu`` row had the Triton backward). An ``auto`` row is labelled with
the backend it chose (``auto -> fa4``: where FlashAttention-4 is installed ``auto`` is FA4, not
one of our kernels).

A second table checks issue 14's "``auto`` picks the fastest kernel per pattern and mode, within
5%" (``--tolerance``): per cell and mode, ``auto`` against the fastest JAX-side row of the same
cell (every implementation but the torch peers ``flex`` and ``flex_fa4``), and whether it is
within the tolerance. Cells without an ``auto`` row are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

ORDER = ("auto", "fa4", "split_gpu", "pallas_gpu", "pallas_gpu_two_kernel_bwd",
         "pallas_gpu_mosaic_bwd", "pallas_gpu_triton_bwd", "cudnn", "cudnn_jax", "triton_native",
         "xla", "flex_fa4", "flex")
PEERS = ("flex", "flex_fa4")   # the torch rows (attention_flex.IMPLS): not choices of ``auto``


def label(row: dict) -> str:
  """``row["impl"]``; for ``auto``, with the backend its note says it chose (``auto -> fa4``)."""
  chose = re.match(r"auto -> (\w+)", row.get("note") or "")
  return f"auto -> {chose.group(1)}" if row["impl"] == "auto" and chose else row["impl"]


def load(paths: list[str], rename: dict[str, str]) -> dict:
  """{(pattern, L, hkv, impl): {mode: row}} from the files (later files win)."""
  cells: dict = {}
  for path in paths:
    with open(path) as f:
      rows = json.load(f)["rows"]
    for r in rows:
      if not r.get("ms"):
        continue
      impl = rename.get(r["impl"], label(r))
      cells.setdefault((r["pattern"], r["L"], r["hkv"], impl), {})[r["mode"]] = r
  return cells


def groups(cells: dict) -> list:
  """The (pattern, L, hkv) cells in print order (the "window" bound last, MHA before GQA)."""
  return sorted({k[:3] for k in cells}, key=lambda g: (g[0] == "window", g[0], g[1], -g[2]))


def table(cells: dict, ceiling: float) -> str:
  out = ["| pattern | L | heads | kernel | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd / FA4 "
         f"| fwd+bwd / FA4 | fwd, fwd+bwd share of {ceiling:.0f} |",
         "|---|---|---|---|---|---|---|---|---|"]
  for pattern, L, hkv in groups(cells):
    fa4 = cells.get((pattern, L, hkv, "flex_fa4"), {})
    impls = sorted((k[3] for k in cells if k[:3] == (pattern, L, hkv)),
                   key=lambda i: ORDER.index(i.split()[0]) if i.split()[0] in ORDER else len(ORDER))
    for impl in impls:
      c = cells[(pattern, L, hkv, impl)]
      tf = {m: c[m]["tflops"] if m in c else None for m in ("fwd", "fwdbwd")}
      ratio = {m: (f"{tf[m] / fa4[m]['tflops']:.2f}" if tf[m] and m in fa4 else "–")
               for m in tf}
      share = ", ".join(f"{tf[m] / ceiling:.0%}" if tf[m] else "–" for m in tf)
      fmt = {m: f"{tf[m]:.0f}" if tf[m] else "–" for m in tf}
      out.append(f"| {pattern} | {L // 1024}K | 32/{hkv} | {impl} | {fmt['fwd']} | "
                 f"{fmt['fwdbwd']} | {ratio['fwd']} | {ratio['fwdbwd']} | {share} |")
  return "\n".join(out)


def auto_check(cells: dict, tolerance: float = 0.05) -> str:
  """Markdown: per cell and mode, ``auto`` against the fastest JAX-side row (module docstring)."""
  out = ["| pattern | L | heads | mode | auto | fastest JAX-side row | auto / fastest | "
         f"within {tolerance:.0%} |", "|---|---|---|---|---|---|---|---|"]
  for pattern, L, hkv in groups(cells):
    impls = [k[3] for k in cells if k[:3] == (pattern, L, hkv)]
    autos = [i for i in impls if i.split()[0] == "auto"]
    if not autos:
      continue
    for mode in ("fwd", "fwdbwd"):
      auto_row = cells[(pattern, L, hkv, autos[0])].get(mode)
      ours = [(cells[(pattern, L, hkv, i)][mode]["tflops"], i) for i in impls
              if i not in PEERS and i.split()[0] != "auto" and mode in cells[(pattern, L, hkv, i)]]
      if not auto_row or not ours:
        continue
      best, name = max(ours)
      ratio = auto_row["tflops"] / best
      verdict = "yes" if ratio >= 1 - tolerance else "**no**"
      out.append(f"| {pattern} | {L // 1024}K | 32/{hkv} | {mode} | {autos[0]}: "
                 f"{auto_row['tflops']:.0f} | {name}: {best:.0f} | {ratio:.2f} | {verdict} |")
  return "\n".join(out) if len(out) > 2 else ""


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("files", nargs="+")
  p.add_argument("--ceiling", type=float, default=790.0)
  p.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW")
  p.add_argument("--tolerance", type=float, default=0.05,
                 help="how far behind the fastest JAX-side row auto may be (0.05 = 5%%)")
  args = p.parse_args(argv)
  rename = {}
  for item in args.rename:
    old, sep, new = item.partition("=")
    if not sep or not old or not new:
      sys.exit(f"--rename takes OLD=NEW, got {item!r}")
    rename[old] = new
  cells = load(args.files, rename)
  if not cells:
    sys.exit("no timed rows in " + " ".join(args.files))
  print(table(cells, args.ceiling))
  check = auto_check(cells, args.tolerance)
  if check:
    print("\n" + check)


if __name__ == "__main__":
  main()
