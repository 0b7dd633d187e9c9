"""Multi-process (2 processes x 4 CPU devices) equals one process; orbax checkpoints move both ways.

The test starts real processes on the JAX distributed runtime (gloo CPU collectives):

1. one process, 8 devices, mesh ``fsdp=8``: one AdamW train step of the LongGen toy model
   (hybrid: halo + ring layers) -> results + a checkpoint (trainer's ``Checkpointer``);
2. two processes, mesh ``sequence=4,tensor=2`` (the ring and the halo cross the process
   boundary, both processes feed the same rows): the same step must give the same loss, grads
   and updated parameters; it saves its own checkpoint and restores the 1-process one into its
   sharding (bit-exact), and checks per-process batch assembly on ``data=2,sequence=4``;
3. one process restores the 2-process checkpoint (bit-exact).

This file is also the worker: ``python tests/test_multihost.py WORKER_ARGS_JSON``.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
T, B = 64, 8


# =============================================================================== worker side
def _worker(args):
  n_local = args["devices"]
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_local}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  import jax  # pylint: disable=import-outside-toplevel
  from longgen_jax import parallel  # pylint: disable=import-outside-toplevel

  if args["nproc"] > 1:
    parallel.initialize(coordinator_address=f"localhost:{args['port']}",
                        num_processes=args["nproc"], process_id=args["pid"])
  assert jax.process_count() == args["nproc"] and jax.device_count() == 8
  out = {}
  for task in args["tasks"]:
    out.update(globals()["_task_" + task["name"]](args, task))
  if jax.process_index() == 0:
    with open(os.path.join(args["out"], "result.json"), "w", encoding="utf-8") as f:
      json.dump(out, f)


def _setup(mesh_cfg):
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from longgen_jax import parallel  # pylint: disable=import-outside-toplevel
  from longgen_jax.model import Llama, tiny  # pylint: disable=import-outside-toplevel
  cfg = tiny(max_seq_len=T, n_layers=3, attention_backend="reference", scan_layers=False)
  par = parallel.create(mesh_cfg, seq_len=T, global_batch=B)
  model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-2, eps=1e-3)   # eps >> |g|: no sign-like first step (fp-order robust)
  abstract_state = {"params": abstract, "opt_state": jax.eval_shape(tx.init, abstract)}
  shardings = par.state_shardings(abstract_state)
  return jax, nnx, par, cfg, graphdef, rest, tx, abstract_state, shardings


def _global_batch():
  rng = np.random.default_rng(7)
  seg = np.ones((B, T), np.int32)
  for b in range(B):
    seg[b, rng.integers(5, T - 5):] = 2
  pos = np.zeros_like(seg)
  for b in range(B):
    for s in (1, 2):
      idx = np.flatnonzero(seg[b] == s)
      pos[b, idx] = np.arange(len(idx))
  return {"inputs": rng.integers(0, 128, (B, T)).astype(np.int32),
          "targets": rng.integers(0, 128, (B, T)).astype(np.int32),
          "positions": pos, "segment_ids": seg, "loss_mask": np.ones((B, T), np.float32)}


def _host(jax, tree):
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return [np.asarray(x).tolist() for x in
          jax.tree.leaves(multihost_utils.process_allgather(tree, tiled=True))]


def _checkpointer(path):
  import grain  # pylint: disable=import-outside-toplevel
  from longgen_jax.training.checkpoint import Checkpointer  # pylint: disable=C0415
  data_iter = iter(grain.MapDataset.range(100).to_iter_dataset())
  return Checkpointer(path, keep=1, async_save=False), data_iter


def _task_train(args, task):
  jax, nnx, par, cfg, graphdef, rest, tx, abstract_state, shardings = _setup(task["mesh"])
  from longgen_jax.model import Llama  # pylint: disable=import-outside-toplevel
  from longgen_jax.training.loss import chunked_cross_entropy  # pylint: disable=C0415
  import optax  # pylint: disable=import-outside-toplevel

  init = lambda: nnx.split(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[1]
  params = jax.jit(init, out_shardings=shardings["params"])()
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  shard = par.data
  host = {k: v[shard.row_start:shard.row_start + shard.rows] for k, v in _global_batch().items()}
  batch = par.device_batch(host)

  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params, rest)
    h = model.hidden_states(batch["inputs"], positions=batch["positions"],
                            segment_ids=batch["segment_ids"], attention_fn=par.attention_fn)
    s, w = chunked_cross_entropy(h, model.unembedding(), batch["targets"], batch["loss_mask"],
                                 chunk=16)
    return s / w

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return loss, grads, optax.apply_updates(params, updates), opt_state

  loss, grads, params, opt_state = jax.jit(
      step, out_shardings=(None, shardings["params"], shardings["params"],
                           shardings["opt_state"]))(params, opt_state, batch)
  ckpt, data_iter = _checkpointer(task["save"])
  ckpt.save(1, {"params": params, "opt_state": opt_state}, data_iter, "{}", meta={})
  ckpt.close()
  return {"loss": float(loss), "grads": _host(jax, grads),
          "state": _host(jax, {"params": params, "opt_state": opt_state})}


def _task_restore(args, task):
  jax, nnx, par, *_, abstract_state, shardings = _setup(task["mesh"])
  from longgen_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  abstract = ckpt_lib.abstract_like(abstract_state, shardings)
  ckpt, _ = _checkpointer(task["path"])
  state, _ = ckpt.restore(1, abstract)   # verifies the per-array checksums as well
  ckpt.close()
  for leaf, sh in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
    assert leaf.sharding == sh, (leaf.sharding, sh)
  return {"restored": _host(jax, state)}


def _task_batch(args, task):
  """Per-process rows -> one global array equal to the global batch (in layout order)."""
  from longgen_jax import parallel  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  par = parallel.create(task["mesh"], seq_len=T, global_batch=B)
  shard = par.data
  full = _global_batch()
  host = {k: v[shard.row_start:shard.row_start + shard.rows] for k, v in full.items()}
  batch = par.device_batch(host)
  got = _host(jax, batch["inputs"])[0]
  want = parallel.reorder_batch(full, par.layout)["inputs"]
  return {"batch_ok": bool(np.array_equal(np.asarray(got), want)), "shard": [shard.index,
          shard.count, shard.rows]}


# =============================================================================== test side
def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(nproc, tasks, out, timeout=900):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get(
      "PYTHONPATH")])))
  procs = []
  for pid in range(nproc):
    a = {"nproc": nproc, "pid": pid, "port": port, "devices": 8 // nproc, "out": out,
         "tasks": tasks}
    procs.append(subprocess.Popen([sys.executable, HERE, json.dumps(a)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, log in zip(procs, logs):
    assert p.returncode == 0, "\n".join(l for l in log.splitlines() if "Gloo" not in l)[-6000:]
  with open(os.path.join(out, "result.json"), encoding="utf-8") as f:
    return json.load(f)


def _close(a, b, tol, what):
  for i, (x, y) in enumerate(zip(a, b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    err = np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-12) if x.size else 0.0
    assert err <= tol, f"{what} leaf {i}: relative error {err:.2e}"


def test_two_processes_match_one_and_checkpoints_move_both_ways(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  os.makedirs(one)
  os.makedirs(two)
  r1 = _launch(1, [{"name": "train", "mesh": "fsdp=8", "save": one + "/ckpt"}], one)
  r2 = _launch(2, [{"name": "train", "mesh": "sequence=4,tensor=2", "save": two + "/ckpt"},
                   {"name": "restore", "mesh": "sequence=4,tensor=2", "path": one + "/ckpt"},
                   {"name": "batch", "mesh": "data=2,sequence=4"}], two)
  assert abs(r1["loss"] - r2["loss"]) <= 1e-5 * abs(r1["loss"])
  _close(r1["grads"], r2["grads"], 2e-5, "grads")
  # nu = g^2 doubles the relative rounding difference of tiny gradients: 1e-4
  _close(r1["state"], r2["state"], 1e-4, "updated state")
  # 2 processes restore the 1-process checkpoint exactly (resharded fsdp=8 -> sequence x tensor)
  _close(r1["state"], r2["restored"], 0.0, "1->2 process restore")
  assert r2["batch_ok"] and r2["shard"] == [0, 2, B // 2], r2["shard"]
  # 1 process restores the 2-process checkpoint exactly
  r3 = _launch(1, [{"name": "restore", "mesh": "fsdp=8", "path": two + "/ckpt"}], one)
  _close(r2["state"], r3["restored"], 0.0, "2->1 process restore")


if __name__ == "__main__":
  _worker(json.loads(sys.argv[1]))
