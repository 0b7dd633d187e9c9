r"""Compiled memory of one training step of a trainer config, per attention backend; nothing runs.

  python3 benchmarks/step_memory.py --config=configs/replication.py:arm=hybrid_sw \
      --backends=auto,pallas_gpu --out=$OUT/step_memory.json
  python3 benchmarks/step_memory.py --config=configs/tiny_cpu.py --backends=xla   # CPU smoke

The step is built as the trainer builds it (``train.make_train_step``, the config's mesh), lowered
on abstract arrays and compiled. For each backend (``model.attention_backend``) it prints XLA's
``memory_analysis()``: arguments, outputs, aliased (donated) bytes and temporaries. "peak" is
arguments + outputs − aliased + temporaries, the device memory the step needs, and the planner's
estimate (``longgen_jax.parallel.memory``) sits next to it. A backend that cannot compile the
step gets its one-line error instead.

Used for the replication's `auto` OOM (docs/replication.md, "Still open"). Overrides go as for
the trainer: ``--config.train.batch_size=8``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from longgen_jax import train as train_lib
from longgen_jax.data.packing import BATCH_KEYS
from longgen_jax.parallel import memory
from longgen_jax.training import checkpoint as ckpt_lib
from longgen_jax.training import config_utils, optim

_CONFIG = train_lib._CONFIG   # pylint: disable=protected-access  (the trainer's --config flag)
_BACKENDS = flags.DEFINE_list("backends", ["auto"], "model.attention_backend values to compile")
_OUT = flags.DEFINE_string("out", "", "write the rows as JSON here")

GiB = 2 ** 30


def compile_step(config) -> dict:
  """memory_analysis of the config's train step, in GiB, plus the planner's estimate."""
  model_cfg = config_utils.validate_config(config, 1)
  shardings = train_lib.mesh_shardings(config)
  t = config.train
  schedule = optim.make_schedule(t)
  tx = optim.make_optimizer(t, schedule)
  graphdef, abstract, abstract_rest = train_lib.abstract_state(model_cfg, tx)
  abstract = ckpt_lib.abstract_like(abstract, shardings and {
      "params": shardings["params"], "opt_state": shardings["opt_state"]})
  state = dict(abstract, step=jax.ShapeDtypeStruct((), jnp.int32))
  rest = train_lib.init_rest(model_cfg, abstract_rest)
  shape = (t.batch_size, t.seq_len)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32)
           for k in BATCH_KEYS}
  step = train_lib.make_train_step(graphdef, tx, schedule, t, shardings)
  ma = step.lower(state, rest, batch).compile().memory_analysis()
  row = {k: getattr(ma, f"{k}_size_in_bytes") / GiB
         for k in ("argument", "output", "alias", "temp")}
  row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"]
  sizes = {a: max(1, config.mesh[a]) for a in config_utils.MESH_AXES}
  platform = "gpu" if jax.default_backend() in ("gpu", "cuda") else "cpu"
  est = memory.estimate(model_cfg, {k: sizes.get(k, 1) for k in ("data", "fsdp", "sequence",
                                                                   "tensor")},
                        seq_len=t.seq_len, global_batch=t.batch_size, grad_accum=t.grad_accum,
                        loss_chunk=t.loss_chunk, platform=platform)
  row["planner"] = est.total / GiB
  return row


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required")
  rows = []
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; batch "
        f"{config.train.batch_size} x {config.train.seq_len}, remat {config.model.remat}")
  print(f"{'backend':14s} {'args':>7s} {'out':>7s} {'alias':>7s} {'temp':>7s} {'peak':>7s} "
        f"{'planner':>8s}  GiB")
  for backend in _BACKENDS.value:
    config.model.attention_backend = backend
    try:
      row = dict(backend=backend, **compile_step(config))
      print(f"{backend:14s} {row['argument']:7.2f} {row['output']:7.2f} {row['alias']:7.2f} "
            f"{row['temp']:7.2f} {row['peak']:7.2f} {row['planner']:8.2f}", flush=True)
    except Exception as e:  # pylint: disable=broad-except
      msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
      row = dict(backend=backend, error=msg)
      print(f"{backend:14s} error: {msg}", flush=True)
    rows.append(row)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      json.dump({"config": config.to_json_best_effort(), "rows": rows}, f, indent=1)
  return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
  app.run(main)
