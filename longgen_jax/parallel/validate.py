"""Ground truth for the memory planner: XLA's buffer assignment of the real train step.

``compiled_vs_estimate`` builds the trainer's step (loss = chunked cross-entropy over
``model.hidden_states``, gradient accumulation over micro-batches, AdamW from
``training.optim``), lowers it with the planner's shardings on the current devices (fake CPU
devices in tests), compiles it, and returns ``(argument + output + temp - alias bytes,
memory.estimate(...))`` per device. Nothing is executed and no parameter is allocated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from longgen_jax.parallel import memory
from longgen_jax.parallel.mesh import MeshConfig, mesh_sizes
from longgen_jax.parallel.runtime import create
from longgen_jax.training.step import make_step


def compiled_vs_estimate(config, mesh_cfg=None, devices=None):
  """``(actual_bytes, memory.Estimate)`` per device for a trainer config on this host's devices."""
  from longgen_jax.model.llama import Llama  # pylint: disable=import-outside-toplevel
  from longgen_jax.training import config_utils, optim  # pylint: disable=import-outside-toplevel
  cfg = config_utils.validate_config(config)
  t = config.train
  mc = MeshConfig.from_any(mesh_cfg if mesh_cfg is not None else config.mesh)
  T, B = int(t.seq_len), int(t.batch_size)
  par = create(mc, seq_len=T, global_batch=B, devices=devices)
  schedule = optim.make_schedule(t)
  tx = optim.make_optimizer(t, schedule)
  graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))),
                                       nnx.Param, ...)
  state = {"params": abstract, "opt_state": jax.eval_shape(tx.init, abstract)}
  sh = {**par.state_shardings(state), "step": par.replicated()}
  state["step"] = jax.ShapeDtypeStruct((), jnp.int32)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, sh)
  bsh = par.batch_shardings()
  batch = {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "loss_mask" else jnp.int32,
                                   sharding=s) for k, s in bsh.items()}
  step = jax.jit(make_step(graphdef, tx, schedule, grad_accum=t.grad_accum,
                           loss_chunk=t.loss_chunk, attention_fn=par.attention_fn),
                 donate_argnums=(0,), in_shardings=(sh, par.replicated(rest), bsh),
                 out_shardings=(sh, par.replicated()))
  compiled = step.lower(state, rest, batch).compile()
  m = compiled.memory_analysis()
  actual = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
  est = memory.estimate(cfg, mesh_sizes(par.mesh), seq_len=T, global_batch=B,
                        grad_accum=int(t.grad_accum), loss_chunk=int(t.loss_chunk),
                        sp_impl=mc.sequence_attention)
  return actual, est
