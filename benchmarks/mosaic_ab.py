"""What the Mosaic GPU kernel A/B scripts share (``mosaic_fwd.py``, ``mosaic_bwd.py``): the
patterns, the one-line refusal without a GPU, one variant row and its timing, and the JSON file."""

from __future__ import annotations

import json
import sys
import time

PATTERNS = {"sink_window": "sink_window:64:4096", "strided": "strided:16:64", "full": "full"}


def no_gpu(script: str) -> bool:
  """True (after the one-line complaint on stderr) when the first device is not a GPU."""
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.devices()[0].platform
  if platform != "gpu":
    print(f"benchmarks/{script}: needs a GPU (Hopper); found {platform}", file=sys.stderr)
  return platform != "gpu"


def new_row(pattern: str, spec, variant: str, config, L: int, hq: int, hkv: int) -> dict:
  """An untimed variant row (``time_row`` fills it): the cell, the variant and its config
  (a dataclass, stored as a dict)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dict(pattern=pattern, spec=str(spec), variant=variant, config=dataclasses.asdict(config),
              L=L, hq=hq, hkv=hkv, ms=None, tflops=None, err=None, status="ok")


def time_row(row: dict, call, useful: float, outputs, ref):
  """Times ``call()`` (``bench_timing.time_cell``) into ``row``: ms, useful TFLOP/s, compile_s,
  loop_ms, and ``err``, the largest relative L2 error of ``outputs(result)`` against ``ref``;
  or status "error" and a note. Returns ``ref``, or these outputs (fp32) when ``ref`` is None
  (the first variant of a cell is the reference of the others)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import bench_timing as timing  # pylint: disable=g-import-not-at-top
  try:
    t = timing.time_cell(call, jax.block_until_ready)
    row.update(ms=t.ms, tflops=useful / (t.ms * 1e-3) / 1e12, compile_s=t.compile_s,
               loop_ms=t.loop_ms)
    got = [np.asarray(x, np.float32) for x in outputs(t.output)]
    if ref is None:
      return got
    row["err"] = max(float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref))
  except Exception as e:  # pylint: disable=broad-except
    row.update(status="error", note=f"{type(e).__name__}: {e}"[:300])
  return ref


def shown(row: dict) -> str:
  """A row's time, TFLOP/s and error, or its error note."""
  if row["status"] != "ok":
    return row["note"]
  return f"{row['ms']:8.2f} ms {row['tflops']:6.1f} TFLOP/s err {row['err']}"


def write_rows(path: str | None, rows: list) -> None:
  """The rows, the date, the device and the jax version as JSON to ``path`` (None: nothing)."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  with open(path, "w") as f:
    json.dump(dict(rows=rows, date=time.strftime("%Y-%m-%d"),
                   device=jax.devices()[0].device_kind, jax=jax.__version__), f, indent=1)
