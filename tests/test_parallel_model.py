"""The sharded model equals the single-device model: loss and every parameter gradient.

Meshes (8 fake CPU devices, child process): 8 data; 2 fsdp x 4 sequence; 2 tensor x 4 sequence;
8 sequence. Layouts: LongGen hybrid (sink+window layers around a full middle, halo + ring) and
all-full (ring). Rows hold packed documents (segment ids, per-document positions, padding), the
batch goes through the zigzag reorder and per-process global-array path, parameters are created
sharded, and the loss is the trainer's chunked cross-entropy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longgen_jax import parallel
from longgen_jax.model import Llama, tiny
from longgen_jax.parallel.testing import multidevice
from longgen_jax.training.loss import chunked_cross_entropy

T, B, V = 128, 8, 128
MESHES = ["data=8", "fsdp=2,sequence=4", "tensor=2,sequence=4", "sequence=8"]


def _config(layout):
  if layout == "hybrid":
    return tiny(max_seq_len=T, attention_backend="reference", remat="full")
  return tiny(max_seq_len=T, attention_backend="reference", layout="full", full="full@16")


def _host_batch(seed=0):
  rng = np.random.default_rng(seed)
  seg = np.ones((B, T), np.int32)
  for b in range(B):
    cuts = np.sort(rng.choice(np.arange(1, T), 3, replace=False))
    seg[b] = 1 + np.searchsorted(cuts, np.arange(T), side="right")
  seg[1, T - 9:] = 0                                   # padding
  pos = np.zeros_like(seg)
  for b in range(B):
    for s in np.unique(seg[b]):
      idx = np.flatnonzero(seg[b] == s)
      pos[b, idx] = np.arange(len(idx))
  return {"inputs": rng.integers(0, V, (B, T)).astype(np.int32),
          "targets": rng.integers(0, V, (B, T)).astype(np.int32),
          "positions": pos, "segment_ids": seg, "loss_mask": (seg > 0).astype(np.float32)}


def _loss(params, graphdef, rest, batch, attention_fn=None):
  model = nnx.merge(graphdef, params, rest)
  hidden = model.hidden_states(batch["inputs"], positions=batch["positions"],
                               segment_ids=batch["segment_ids"], attention_fn=attention_fn)
  loss_sum, weight = chunked_cross_entropy(hidden, model.unembedding(), batch["targets"],
                                           batch["loss_mask"], chunk=32)
  return loss_sum / weight


@functools.lru_cache(maxsize=None)
def _reference(layout):
  graphdef, params, rest = nnx.split(Llama(_config(layout), rngs=nnx.Rngs(0)), nnx.Param, ...)
  batch = {k: jnp.asarray(v) for k, v in _host_batch().items()}
  loss, grads = jax.jit(jax.value_and_grad(_loss), static_argnums=1)(params, graphdef, rest,
                                                                    batch)
  return graphdef, params, rest, float(loss), jax.device_get(grads)


@multidevice(8)
@pytest.mark.parametrize("layout", ["hybrid", "full"])
@pytest.mark.parametrize("mesh_cfg", MESHES)
def test_sharded_loss_and_grads_match_single_device(mesh_cfg, layout):
  graphdef, params, rest, ref_loss, ref_grads = _reference(layout)
  par = parallel.create(mesh_cfg, seq_len=T, global_batch=B)
  shardings = par.state_shardings({"params": params})["params"]
  params = jax.device_put(params, shardings)
  batch = par.device_batch(_host_batch())
  loss_fn = functools.partial(_loss, attention_fn=par.attention_fn)
  loss, grads = jax.jit(jax.value_and_grad(loss_fn), static_argnums=1)(params, graphdef, rest,
                                                                        batch)
  assert abs(float(loss) - ref_loss) <= 1e-5 * abs(ref_loss), (float(loss), ref_loss)
  flat_ref = jax.tree_util.tree_flatten_with_path(ref_grads)[0]
  flat = jax.tree.leaves(jax.device_get(grads))
  for (path, a), b in zip(flat_ref, flat):
    err = np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12)
    assert err <= 2e-5, f"{jax.tree_util.keystr(path)}: relative error {err:.2e}"


@multidevice(8)
def test_params_are_created_sharded():
  """``jit(init, out_shardings=...)``: each device holds only its shard, values match."""
  cfg = _config("hybrid")
  par = parallel.create("fsdp=2,sequence=2,tensor=2", seq_len=T, global_batch=B)
  abstract = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)[1]
  shardings = par.state_shardings({"params": abstract})["params"]
  init = lambda: nnx.split(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[1]
  params = jax.jit(init, out_shardings=shardings)()
  ref = nnx.split(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[1]
  for (path, x), r in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(r), err_msg=str(path))
  wq = params["segments"][0]["layers"][0]["wq"].get_value()   # [repeats, D, Hq, Dh]
  assert wq.sharding.spec == jax.sharding.PartitionSpec(None, ("fsdp", "sequence"), "tensor",
                                                         None)
  assert wq.addressable_shards[0].data.shape == (wq.shape[0], wq.shape[1] // 4,
                                                  wq.shape[2] // 2, wq.shape[3])


@multidevice(8)
def test_trainer_step_with_parallel_shardings():
  """``parallel.trainer_shardings`` fills the trainer's slot: its real step on a
  2 fsdp x 4 sequence mesh gives the one-device loss, gradient norm and parameters."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from longgen_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import config_utils, optim  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny_cpu.py")
  spec = importlib.util.spec_from_file_location("tiny_cpu_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  config.mesh.update(dict(data=1, fsdp=2, sequence=4, tensor=1))
  config.train.batch_size = 4
  model_cfg = config_utils.validate_config(config)
  t = config.train
  tx = optim.make_optimizer(t, optim.make_schedule(t))
  graphdef, _, rest = train_lib.abstract_state(model_cfg, tx)
  host = _host_batch()
  host = {k: v[:4] % model_cfg.vocab_size if k in ("inputs", "targets") else v[:4]
          for k, v in host.items()}

  def run(shardings):
    params = train_lib.init_params(model_cfg, 0, shardings and shardings["params"])
    opt = jax.jit(tx.init, **({} if shardings is None else
                              {"out_shardings": shardings["opt_state"]}))(params)
    state = {"params": params, "opt_state": opt, "step": jnp.asarray(0, jnp.int32)}
    step = train_lib.make_train_step(graphdef, tx, optim.make_schedule(t), t, shardings)
    if shardings is None:
      return step(state, rest, {k: jnp.asarray(v) for k, v in host.items()})
    par = shardings["parallel"]
    return step(state, rest, par.device_batch(host))

  (s1, m1), (s8, m8) = run(None), run(parallel.trainer_shardings(config))
  for k in ("loss", "grad_norm", "param_norm"):
    np.testing.assert_allclose(float(m8[k]), float(m1[k]), rtol=2e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(jax.device_get(s1["params"])),
                  jax.tree.leaves(jax.device_get(s8["params"]))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
