"""The Flax NNX Llama with one attention pattern per layer (``docs/architecture.md`` §4).

Module tree (parameter names are the canonical ones of ``layers.py``)::

  Llama
    embed [V, D], final_norm [D], lm_head [D, V] (absent when tied)
    segments: nnx.List, one entry per ``scan_plan.Segment``:
      DecoderLayer            (unscanned segment: one layer, canonical shapes)
      LayerStack.layers[j]    (scanned segment: DecoderLayer j of the super-block, every param
                               stacked along a leading axis of size ``repeats``)

The math lives in ``layers.py`` (pure functions); the modules only hold parameters, pick the
attention call of each layer's spec, and apply ``nnx.remat`` / ``nnx.scan``. The attention
function itself is the caller's (``attention_fn=``, see ``attention_fn.py``): the model never
looks up a mesh.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pallas_kernels.spec import AttentionSpec

from longgen_jax.model import init as init_lib
from longgen_jax.model.attention_fn import AttentionFn
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.layers import (LAYER_PARAM_NAMES, decoder_layer, embed_tokens,
                                      final_hidden, logits_from_hidden, spec_attend)
from longgen_jax.model.remat import remat_policy
from longgen_jax.model.rope import rope_cos_sin
from longgen_jax.model.scan_plan import Segment, plan_segments


class DecoderLayer(nnx.Module):
  """One decoder layer's parameters (or ``len(indices)`` of them, stacked, when ``stacked``)."""

  def __init__(self, cfg: ModelConfig, spec: AttentionSpec, *, layers_key,
               indices: Sequence[int], stacked: bool):
    self.cfg = cfg
    self.spec = spec
    params = init_lib.init_layers(cfg, layers_key, indices)
    for name in LAYER_PARAM_NAMES:
      value = params[name] if stacked else params[name][0]
      setattr(self, name, nnx.Param(value))

  def params(self) -> dict[str, jax.Array]:
    """This layer's canonical parameter dict (stacked when the layer is stacked)."""
    return {name: getattr(self, name)[...] for name in LAYER_PARAM_NAMES}

  def __call__(self, x, cos, sin, segment_ids=None, attention_fn: AttentionFn | None = None):
    attend = spec_attend(self.cfg, self.spec, segment_ids, attention_fn)
    return decoder_layer(self.cfg, self.params(), x, cos, sin, attend)


def apply_layer(layer: DecoderLayer, x, cos, sin, segment_ids, *, prevent_cse: bool = True,
                attention_fn: AttentionFn | None = None):
  """Runs ``layer`` under ``nnx.remat`` with its kind's policy (``cfg.remat_for(spec)``)."""
  name = layer.cfg.remat_for(layer.spec)
  if name == "none":
    return layer(x, cos, sin, segment_ids, attention_fn)

  def run(m, x, cos, sin, segment_ids):
    return m(x, cos, sin, segment_ids, attention_fn)

  return nnx.remat(run, policy=remat_policy(name), prevent_cse=prevent_cse)(
      layer, x, cos, sin, segment_ids)


class LayerStack(nnx.Module):
  """A scanned segment: its super-block's layers, each stacked ``segment.repeats`` times."""

  def __init__(self, cfg: ModelConfig, segment: Segment, *, layers_key):
    self.segment = segment
    R = segment.repeats
    self.layers = nnx.List([
        DecoderLayer(cfg, spec, layers_key=layers_key, stacked=True,
                     indices=[segment.layer_index(r, j) for r in range(R)])
        for j, spec in enumerate(segment.specs)])

  def __call__(self, x, cos, sin, segment_ids=None, attention_fn: AttentionFn | None = None):

    @nnx.scan(in_axes=(nnx.Carry, 0, None, None, None), out_axes=nnx.Carry)
    def body(x, stack, cos, sin, segment_ids):
      for layer in stack.layers:
        # Inside scan, CSE across iterations is impossible: prevent_cse=False is cheaper.
        x = apply_layer(layer, x, cos, sin, segment_ids, prevent_cse=False,
                        attention_fn=attention_fn)
      return x

    return body(x, self, cos, sin, segment_ids)


class Llama(nnx.Module):
  """Llama decoder; ``cfg.layers[i]`` is layer i's attention pattern."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.plan = plan_segments(cfg.layers, cfg.scan_layers)
    key = rngs.params()
    layers_key = init_lib.root_keys(key)["layers"]
    glob = init_lib.init_globals(cfg, key)
    self.embed = nnx.Param(glob["embed"])
    segments = []
    for seg in self.plan:
      if seg.scanned:
        segments.append(LayerStack(cfg, seg, layers_key=layers_key))
      else:
        segments.append(DecoderLayer(cfg, seg.specs[0], layers_key=layers_key,
                                     indices=[seg.start], stacked=False))
    self.segments = nnx.List(segments)
    self.final_norm = nnx.Param(glob["final_norm"])
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Param(glob["lm_head"])

  # ---------------------------------------------------------------- forward
  def hidden_states(self, tokens, positions=None, segment_ids=None, *,
                    attention_fn: AttentionFn | None = None):
    """``tokens [B, T]`` -> ``[B, T, D]`` after the final norm (compute dtype).

    ``positions [B, T]`` (default ``arange(T)``) are the RoPE positions (packed documents
    restart at 0); ``segment_ids [B, T]`` int keep packed documents from seeing each other.
    ``attention_fn`` runs every layer's attention (``attention_fn.py``; None: the kernel on one
    device; under a mesh the caller passes ``parallel.Parallel.attention_fn``).
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    B, T = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope_cos_sin(self.cfg, positions)
    x = embed_tokens(self.cfg, self.embed[...], tokens, attention_fn)
    for seg, module in zip(self.plan, self.segments):
      if seg.scanned:
        x = module(x, cos, sin, segment_ids, attention_fn)
      else:
        x = apply_layer(module, x, cos, sin, segment_ids, attention_fn=attention_fn)
    return final_hidden(self.cfg, self.final_norm[...], x)

  def __call__(self, tokens, positions=None, segment_ids=None, *,
               attention_fn: AttentionFn | None = None):
    """Float32 logits ``[B, T, V]``."""
    hidden = self.hidden_states(tokens, positions, segment_ids, attention_fn=attention_fn)
    return logits_from_hidden(self.cfg, hidden, self.unembedding())

  def unembedding(self):
    """``[D, V]`` output matrix: ``lm_head``, or ``embed.T`` when embeddings are tied."""
    if self.cfg.tie_embeddings:
      return self.embed[...].T
    return self.lm_head[...]
