"""The training step: chunked cross-entropy, gradient accumulation, one optax update.

One implementation, shared by the trainer (``train.make_train_step`` adds jit and shardings), the
memory planner's check (``parallel/validate.py``) and ``benchmarks/train_step.py``. Imports only
jax, flax, optax and the loss, so the benchmark runs where grain / ml_collections are absent.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from longgen_jax.training.loss import chunked_cross_entropy


def make_step(graphdef: Any, tx: optax.GradientTransformation, schedule: Callable, *,
              grad_accum: int, loss_chunk: int, attention_fn: Any = None) -> Callable:
  """``step(state, rest, batch) -> (state, metrics)`` (not jitted).

  ``state`` is ``{"step", "params", "opt_state"}``; ``rest`` the model's non-parameter state;
  ``batch`` the data dict of ``[batch_size, seq_len]`` arrays. The batch is split into
  ``grad_accum`` micro-batches whose gradients are summed in fp32 before one update; the loss is
  normalised by the target tokens of the WHOLE batch, so accumulation gives the same update as
  one big batch. ``attention_fn`` is handed to the model (``model/attention_fn.py``): None runs
  the kernel on one device; under a mesh the caller passes ``parallel.Parallel.attention_fn``.
  """
  accum, chunk = int(grad_accum), int(loss_chunk)

  def loss_fn(params, rest, micro, denom):
    model = nnx.merge(graphdef, params, rest)
    hidden = model.hidden_states(micro["inputs"], positions=micro["positions"],
                                 segment_ids=micro.get("segment_ids"),
                                 attention_fn=attention_fn)
    loss_sum, _ = chunked_cross_entropy(hidden, model.unembedding(), micro["targets"],
                                        micro["loss_mask"], chunk=chunk)
    return loss_sum / denom

  grad_fn = jax.value_and_grad(loss_fn)

  def step(state, rest, batch):
    params = state["params"]
    denom = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
    if accum == 1:
      loss, grads = grad_fn(params, rest, batch, denom)
    else:
      # Micro-batch m is rows m::accum (not a contiguous block): with the batch sharded over
      # data x fsdp, every micro-batch is then already spread over all those devices.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1),
          batch)

      def body(carry, mb):
        loss_acc, grad_acc = carry
        loss, grads = grad_fn(params, rest, mb, denom)
        grad_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
        return (loss_acc + loss, grad_acc), None

      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
      (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": optax.global_norm(params),
               "lr": schedule(state["step"]), "target_tokens": denom}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return step
