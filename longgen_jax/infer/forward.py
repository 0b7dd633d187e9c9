"""The model's forward pass with a hybrid KV cache: prefill chunks and decode steps.

Pure functions over CANONICAL parameters (``docs/architecture.md`` §4). Every layer is
``longgen_jax.model.layers.decoder_layer`` (the one implementation of norm / q,k,v + RoPE /
output projection / MLP shared with training); only its ``attend(q, k, v)`` differs:

* prefill chunk ``[start, start + C)`` of a layer:
    self part    ``pallas_kernels.attention(q, k, v, spec, q_offset=o, kv_offset=o)``: the
                 chunk's causal attention to itself through the training kernels;
    cache part   ``attend.chunk_from_cache``: the chunk's queries over positions ``< start``;
    merged by log-sum-exp (``pallas_kernels.lse_merge``), then the chunk's K/V are cached.
  The self part's static offset ``o`` is 0 for the first chunk and ``C`` for every later one: the
  patterns are translation invariant there (no sink inside a later chunk as ``C >= sink``;
  strided blocks keep their residue as ``C`` is a multiple of ``vert_stride * block``), so two
  compiled programs serve prompts of any length while ``start`` stays a traced scalar.
* decode step: the new token's K/V are written first, then ``attend.decode_from_cache``.

Rows are RIGHT-padded: every row's token ``t`` sits at position ``t``, so the static offsets of
the kernels are exact for every row; padding lies after a row's last token, and causality keeps
it out of that row's real queries (``limit`` keeps it out of the sparse caches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import pallas_kernels
from pallas_kernels.api import AttentionShapes
from pallas_kernels.lse_merge import merge_forward
from pallas_kernels.spec import AttentionSpec

from longgen_jax.infer import attend as attend_lib
from longgen_jax.infer.cache import HybridCache, write_chunk, write_token
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.layers import (attention_scale, decoder_layer, embed_tokens,
                                      final_hidden, logits_from_hidden)
from longgen_jax.model.rope import rope_cos_sin


def chunk_attention_shapes(cfg: ModelConfig, batch: int, chunk: int, *,
                           first: bool) -> AttentionShapes:
  """The static facts of ``prefill_chunk``'s self-part attention call for a chunk of ``chunk``
  tokens (module docstring: offset 0 for the first chunk, ``chunk`` for every later one), as
  ``pallas_kernels.select_backend`` takes them: which backend ``auto`` gives a prefill."""
  off = 0 if first else chunk
  return AttentionShapes(batch, chunk, chunk, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, off, off,
                         False)


def unembedding(cfg: ModelConfig, params) -> jax.Array:
  """``[D, V]``: ``lm_head`` or, with tied embeddings, ``embed.T``."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def prefill_chunk(cfg: ModelConfig, params, cache: HybridCache, tokens, start, limit, *,
                  first: bool, backend: str = "auto", block_k: int = 512,
                  last_logits=None, targets=None):
  """Runs chunk ``tokens [B, C]`` at positions ``start + arange(C)`` and caches its K/V.

  Args:
    start: first position (int32 scalar, traced; a multiple of ``C`` unless ``first``).
    limit: ``[B]`` row lengths (prompt lengths): positions ``>= limit[b]`` are padding.
    first: static; True for the chunk at position 0 (no cache part, self offset 0).
    last_logits: ``[B, V]`` carried logits; the rows whose last token ``limit[b] - 1`` falls in
      this chunk get their next-token logits written there.
    targets: ``[B, C]`` int; when given, also returns the log-probability of each target under
      the chunk's logits (perplexity), ``[B, C]`` fp32.
  Returns ``(last_logits, logprobs or None, cache)``; ``cache.lengths`` becomes
  ``min(limit, start + C)``.
  """
  B, C = tokens.shape
  start = jnp.asarray(start, jnp.int32)
  positions = start + jnp.broadcast_to(jnp.arange(C, dtype=jnp.int32), (B, C))
  cos, sin = rope_cos_sin(cfg, positions)
  scale = attention_scale(cfg)
  offset = chunk_attention_shapes(cfg, B, C, first=first).q_offset
  x = embed_tokens(cfg, params["embed"], tokens)
  new_layers = []
  for p, lc in zip(params["layers"], cache.layers):
    holder = {}

    def attend(q, k, v, lc=lc, holder=holder):
      out = pallas_kernels.attention(q, k, v, lc.spec, q_offset=offset, kv_offset=offset,
                                     scale=scale, backend=backend, return_lse=not first)
      if not first:
        o_self, lse_self = out
        o_c, lse_c = attend_lib.chunk_from_cache(lc, q, positions, start,
                                                 page_table=cache.page_table, scale=scale,
                                                 block_k=block_k)
        out, _ = merge_forward([o_self, o_c], [lse_self, lse_c], out_dtype=q.dtype)
      holder["lc"] = write_chunk(lc, k, v, start, limit, cache.page_table)
      return out

    x = decoder_layer(cfg, p, x, cos, sin, attend)
    new_layers.append(holder["lc"])
  hidden = final_hidden(cfg, params["final_norm"], x)
  w = unembedding(cfg, params)
  idx = jnp.clip(limit - 1 - start, 0, C - 1)
  h_last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
  logits = logits_from_hidden(cfg, h_last, w)
  here = (limit - 1 >= start) & (limit - 1 < start + C)
  if last_logits is None:
    last_logits = logits
  else:
    last_logits = jnp.where(here[:, None], logits, last_logits)
  logprobs = None
  if targets is not None:
    all_logits = logits_from_hidden(cfg, hidden, w)
    logz = jax.nn.logsumexp(all_logits, axis=-1)
    tgt = jnp.take_along_axis(all_logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logprobs = tgt - logz
  lengths = jnp.minimum(limit, start + C).astype(jnp.int32)
  new_cache = HybridCache(tuple(new_layers), lengths, cache.page_table)
  return last_logits, logprobs, new_cache


def decode_step(cfg: ModelConfig, params, cache: HybridCache, tokens, *, kv_bucket: int,
                impl: str = "auto"):
  """One token per row: ``tokens [B]`` at positions ``cache.lengths``.

  Returns ``(logits [B, V] fp32, cache)`` with every row's length advanced by one. ``kv_bucket``
  (static) must be >= ``max(lengths) + 1`` and <= the capacity.
  """
  pos = cache.lengths
  positions = pos[:, None]
  cos, sin = rope_cos_sin(cfg, positions)
  scale = attention_scale(cfg)
  x = embed_tokens(cfg, params["embed"], tokens[:, None])
  new_layers = []
  for p, lc in zip(params["layers"], cache.layers):
    holder = {}

    def attend(q, k, v, lc=lc, holder=holder):
      lc = write_token(lc, k, v, pos, cache.page_table)
      holder["lc"] = lc
      return attend_lib.decode_from_cache(lc, q, positions, kv_bucket=kv_bucket,
                                          page_table=cache.page_table, scale=scale, impl=impl)

    x = decoder_layer(cfg, p, x, cos, sin, attend)
    new_layers.append(holder["lc"])
  hidden = final_hidden(cfg, params["final_norm"], x)
  logits = logits_from_hidden(cfg, hidden[:, 0], unembedding(cfg, params))
  return logits, HybridCache(tuple(new_layers), pos + 1, cache.page_table)


def serving_specs(cfg: ModelConfig, kv_drop: AttentionSpec | None = None, *,
                  serve_full: bool = False) -> tuple[AttentionSpec, ...]:
  """The pattern each layer is SERVED with: the model's, or ``kv_drop`` in place of every full
  layer (inference-time KV dropping, e.g. StreamingLLM-style ``sink_window:64:4096``), or with
  ``serve_full`` full attention in every layer (the model's own full spec, else one at its sparse
  layers' largest block): what a sparse or hybrid model's sparse layers cost it."""
  if serve_full:
    full = next((s for s in cfg.layers if s.is_full),
                AttentionSpec.full(block=max(s.block for s in cfg.layers)))
    return (full,) * len(cfg.layers)
  if kv_drop is None:
    return tuple(cfg.layers)
  return tuple(kv_drop if s.is_full else s for s in cfg.layers)

