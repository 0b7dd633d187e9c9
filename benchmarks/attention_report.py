"""Markdown tables from ``benchmarks/attention.py`` JSON files: each row against FlashAttention-4.

  python3 benchmarks/attention_report.py benchmarks/results/attention_issue14_*_2026-12-04.json

For every (pattern, length, KV heads) it prints each implementation's useful TFLOP/s, forward /
forward+backward, its ratio to the ``flex_fa4`` row of the same cell and its share of a matmul
ceiling (``--ceiling``, default 790 TFLOP/s: bf16 matmuls measured on the H200). When several
files hold the same cell, the later file wins. ``--rename OLD=NEW`` relabels an implementation
(e.g. runs whose ``pallas_gpu`` row had the Triton backward). An ``auto`` row is labelled with
the backend it chose (``auto -> fa4``: where FlashAttention-4 is installed ``auto`` is FA4, not
one of our kernels).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

ORDER = ("auto", "split_gpu", "pallas_gpu", "pallas_gpu_mosaic_bwd", "pallas_gpu_triton_bwd",
         "cudnn", "cudnn_jax", "triton_native", "xla", "flex_fa4", "flex")


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


def table(cells: dict, ceiling: float) -> str:
  out = ["| pattern | L | heads | kernel | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd / FA4 "
         f"| fwd+bwd / FA4 | fwd, fwd+bwd share of {ceiling:.0f} |",
         "|---|---|---|---|---|---|---|---|---|"]
  groups = sorted({k[:3] for k in cells}, key=lambda g: (g[0] == "window", g[0], g[1], -g[2]))
  for pattern, L, hkv in groups:
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


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("files", nargs="+")
  p.add_argument("--ceiling", type=float, default=790.0)
  p.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW")
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


if __name__ == "__main__":
  main()
