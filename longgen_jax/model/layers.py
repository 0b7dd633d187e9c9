"""The decoder layer as pure functions over CANONICAL per-layer parameters.

One implementation for everything: the NNX modules (``llama.py``) call these functions, and the
inference engine calls them directly, layer by layer, with its own KV cache and attention call.

Canonical per-layer parameters (``docs/architecture.md`` §4), any float dtype (cast to the
compute dtype at use)::

  {"attn_norm": [D], "wq": [D, Hq, Dh], "wk": [D, Hkv, Dh], "wv": [D, Hkv, Dh],
   "wo": [Hq, Dh, D], "mlp_norm": [D], "w_gate": [D, F], "w_up": [D, F], "w_down": [F, D]}

A layer is ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; ``decoder_layer`` spells it out and
takes the attention itself as a callable ``attend(q, k, v) -> out`` so that training (one
``pallas_kernels.attention`` call with the layer's spec) and cached decoding share the rest.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from pallas_kernels.spec import AttentionSpec

from longgen_jax.model.attention_fn import AttentionFn, resolve
from longgen_jax.model.config import ModelConfig
from longgen_jax.model.rope import apply_rope

LAYER_PARAM_NAMES = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")
Params = Mapping[str, jax.Array]
Attend = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def layer_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Canonical shapes of one layer's parameters."""
  D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim
  return {"attn_norm": (D,), "wq": (D, H, Dh), "wk": (D, K, Dh), "wv": (D, K, Dh),
          "wo": (H, Dh, D), "mlp_norm": (D,), "w_gate": (D, F), "w_up": (D, F), "w_down": (F, D)}


def compute_dtype(cfg: ModelConfig):
  return jnp.dtype(cfg.dtype)


def rms_norm(x, scale, eps: float, dtype=None):
  """RMSNorm with float32 statistics: ``x / sqrt(mean(x^2) + eps) * scale`` (output ``dtype``)."""
  dtype = x.dtype if dtype is None else dtype
  xf = x.astype(jnp.float32)
  var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
  return (xf * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)).astype(dtype)


def attention_qkv(cfg: ModelConfig, p: Params, h, cos, sin):
  """Normed input ``h [B, T, D]`` -> ``q [B,T,Hq,Dh]``, ``k, v [B,T,Hkv,Dh]`` (RoPE applied).

  ``cos, sin``: ``[B, T, Dh]`` float32 from ``rope.rope_cos_sin`` at the tokens' positions.
  """
  dt = compute_dtype(cfg)
  h = h.astype(dt)
  q = jnp.einsum("btd,dhk->bthk", h, p["wq"].astype(dt))
  k = jnp.einsum("btd,dhk->bthk", h, p["wk"].astype(dt))
  v = jnp.einsum("btd,dhk->bthk", h, p["wv"].astype(dt))
  q = checkpoint_name(apply_rope(q, cos, sin), "query_proj")
  k = checkpoint_name(apply_rope(k, cos, sin), "key_proj")
  v = checkpoint_name(v, "value_proj")
  return q, k, v


def attention_out(cfg: ModelConfig, p: Params, o):
  """Attention output ``o [B, T, Hq, Dh]`` -> ``[B, T, D]`` through ``wo``."""
  dt = compute_dtype(cfg)
  return jnp.einsum("bthk,hkd->btd", o.astype(dt), p["wo"].astype(dt))


def mlp(cfg: ModelConfig, p: Params, h):
  """SwiGLU: ``(silu(h w_gate) * (h w_up)) w_down`` on the normed input ``h [B, T, D]``."""
  dt = compute_dtype(cfg)
  h = h.astype(dt)
  gate = checkpoint_name(jnp.einsum("btd,df->btf", h, p["w_gate"].astype(dt)), "mlp_gate")
  up = checkpoint_name(jnp.einsum("btd,df->btf", h, p["w_up"].astype(dt)), "mlp_up")
  return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["w_down"].astype(dt))


def attention_scale(cfg: ModelConfig) -> float:
  """The explicit softmax scale ``1/sqrt(head_dim)`` (never folded into the weights)."""
  return float(cfg.head_dim) ** -0.5


def spec_attend(cfg: ModelConfig, spec: AttentionSpec, segment_ids=None,
                attention_fn: AttentionFn | None = None) -> Attend:
  """``attend`` for a whole (packed) row: ``attention_fn`` with the layer's spec.

  ``attention_fn`` is what the caller handed the model (``attention_fn.py``): None is the kernel
  itself on one device (``pallas_kernels.attention``); the trainer under a mesh passes
  shard_map'ed ring / halo attention (``parallel.Parallel.attention_fn``).
  """
  fn = resolve(attention_fn)

  def attend(q, k, v):
    return fn(q, k, v, spec, segment_ids=segment_ids, backend=cfg.attention_backend,
              scale=attention_scale(cfg))

  return attend


def decoder_layer(cfg: ModelConfig, p: Params, x, cos, sin, attend: Attend):
  """One pre-norm decoder layer on the residual stream ``x [B, T, D]`` (compute dtype)."""
  dt = compute_dtype(cfg)
  x = x.astype(dt)
  h = rms_norm(x, p["attn_norm"], cfg.norm_eps, dt)
  q, k, v = attention_qkv(cfg, p, h, cos, sin)
  o = checkpoint_name(attend(q, k, v), "context")
  x = x + attention_out(cfg, p, o)
  h = rms_norm(x, p["mlp_norm"], cfg.norm_eps, dt)
  return x + mlp(cfg, p, h)


def embed_tokens(cfg: ModelConfig, embed, tokens, attention_fn: AttentionFn | None = None):
  """``tokens [B, T]`` int -> ``[B, T, D]`` in the compute dtype."""
  # Under a mesh (``attention_fn.constrain``): gather from a table replicated over fsdp/sequence
  # (one all-gather of the compute-dtype table) so the lookup is index-parallel; no-op on one
  # device.
  table = resolve(attention_fn).constrain(embed.astype(compute_dtype(cfg)), ("vocab", None))
  return embedding_lookup(table, tokens)


@jax.custom_vjp
def embedding_lookup(table, tokens):
  """``table[tokens]`` whose gradient is summed in fp32, whatever the table's dtype.

  The plain ``jnp.take`` gradient is a scatter-add in the table's dtype. In bf16 every token adds
  one rounded atomic to its row, so frequent tokens (a byte vocabulary on indented code: spaces)
  both serialise and lose their sum. On an H200 (``benchmarks/embed_grad.py``, 128 x 1024
  tokens of Python source, d 512, vocab 264) it took 580 ms with a 19% error, against 0.43 ms
  for an fp32 sum. Here the sum is fp32 and only its result is rounded to the table's dtype.
  """
  return jnp.take(table, tokens, axis=0)


def _lookup_fwd(table, tokens):
  # [V, 0] carries the table's row count and dtype to the backward at no memory cost.
  return jnp.take(table, tokens, axis=0), (tokens, jnp.zeros((table.shape[0], 0), table.dtype))


def _lookup_bwd(res, g):
  tokens, proto = res
  d = g.shape[-1]
  grad = jnp.zeros((proto.shape[0], d), jnp.float32).at[tokens.reshape(-1)].add(
      g.reshape(-1, d).astype(jnp.float32))
  return grad.astype(proto.dtype), None


embedding_lookup.defvjp(_lookup_fwd, _lookup_bwd)


def final_hidden(cfg: ModelConfig, final_norm, x):
  """The final RMSNorm: residual stream -> hidden states (compute dtype)."""
  return rms_norm(x, final_norm, cfg.norm_eps, compute_dtype(cfg))


def logits_from_hidden(cfg: ModelConfig, hidden, unembedding):
  """``hidden [..., D]`` x ``unembedding [D, V]`` -> float32 logits (fp32 accumulation)."""
  dt = compute_dtype(cfg)
  return jnp.einsum("...d,dv->...v", hidden.astype(dt), unembedding.astype(dt),
                    preferred_element_type=jnp.float32)
