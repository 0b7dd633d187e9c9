"""PNG plots of evaluation results (matplotlib, Agg backend; skipped when it is missing)."""

from __future__ import annotations

import sys


def _pyplot():
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("eval: matplotlib is not installed; no plots written", file=sys.stderr)
    return None
  return plt


def _save(plt, fig, path: str) -> str:
  """Lays out, writes (120 dpi) and closes ``fig``; returns ``path``."""
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _klabel(n: int) -> str:
  return f"{n // 1024}k" if n % 1024 == 0 and n >= 1024 else str(n)


def niah_heatmap(grid: dict, path: str, title: str) -> str | None:
  """``grid {length: {depth: score}}`` -> heatmap (x: length, y: depth), 0 red .. 100 green."""
  plt = _pyplot()
  if plt is None or not grid:
    return None
  lengths = sorted(grid, key=int)
  depths = sorted({float(d) for g in grid.values() for d in g})
  data = [[grid[L].get(_dkey(grid[L], d), float("nan")) for L in lengths] for d in depths]
  fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(lengths), 1.0 + 0.45 * len(depths)))
  im = ax.imshow(data, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
  ax.set_xticks(range(len(lengths)), [_klabel(int(L)) for L in lengths])
  ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel("needle depth")
  for i, row in enumerate(data):
    for j, v in enumerate(row):
      if v == v:
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
  fig.colorbar(im, ax=ax, label="score")
  ax.set_title(title, fontsize=9)
  return _save(plt, fig, path)


def _dkey(g: dict, d: float) -> str:
  for k in g:
    if abs(float(k) - d) < 1e-6:
      return k
  return ""


def accuracy_vs_length(by_task: dict, path: str, title: str) -> str | None:
  """``{task: {length: score}}`` -> one line per task."""
  plt = _pyplot()
  if plt is None or not by_task:
    return None
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for name, by_len in sorted(by_task.items()):
    xs = sorted(by_len, key=int)
    ax.plot([int(x) for x in xs], [by_len[x] for x in xs], marker="o", label=name)
  ax.set_xscale("log", base=2)
  ticks = sorted({int(x) for v in by_task.values() for x in v})
  ax.set_xticks(ticks, [_klabel(t) for t in ticks])
  ax.set_ylim(-2, 102)
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel("score")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(title, fontsize=9)
  return _save(plt, fig, path)


def perplexity_vs_position(buckets: list, path: str, title: str) -> str | None:
  """Perplexity per position bucket ``[lo, hi)`` (x: bucket end, log scale)."""
  plt = _pyplot()
  if plt is None or not buckets:
    return None
  fig, ax = plt.subplots(figsize=(6.5, 4))
  ax.plot([b["hi"] for b in buckets], [b["ppl"] for b in buckets], marker="o")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("token position (bucket end)")
  ax.set_ylabel("perplexity")
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize=9)
  return _save(plt, fig, path)
