"""Parameter initialisation in canonical form, independent of how layers are grouped.

Every tensor gets its own key, derived from the root key and the GLOBAL layer index, so the same
seed gives the same canonical parameters with ``scan_layers`` on or off and for any grouping.
Matrices ~ N(0, initializer_range^2) (as HF Llama), norm scales = 1.

The generators are jitted with only shapes / dtype / std static: eager RNG would compile every
op separately, and keying the cache on shapes lets configs that differ elsewhere share compiles.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longgen_jax.model.config import ModelConfig
from longgen_jax.model.layers import LAYER_PARAM_NAMES, layer_param_shapes

_NORMS = ("attn_norm", "mlp_norm")


def root_keys(key) -> dict[str, jax.Array]:
  """Independent keys of the embedding, the LM head and the layer stack."""
  k_embed, k_head, k_layers = jax.random.split(key, 3)
  return {"embed": k_embed, "lm_head": k_head, "layers": k_layers}


def _split_normal(key, shapes: Sequence[tuple[int, ...]], dtype: str, std: float):
  """One normal draw of the total size, cut into ``shapes`` (one RNG call: cheaper to compile)."""
  sizes = [int(np.prod(s)) for s in shapes]
  flat = jax.random.normal(key, (sum(sizes),), jnp.float32) * std
  out, off = [], 0
  for s, n in zip(shapes, sizes):
    out.append(flat[off:off + n].reshape(s).astype(dtype))
    off += n
  return out


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _init_globals(key, vocab: int, d: int, dtype: str, std: float, tied: bool):
  keys = root_keys(key)
  out = {"embed": _split_normal(keys["embed"], [(vocab, d)], dtype, std)[0],
         "final_norm": jnp.ones((d,), dtype)}
  if not tied:
    out["lm_head"] = _split_normal(keys["lm_head"], [(d, vocab)], dtype, std)[0]
  return out


def init_globals(cfg: ModelConfig, key) -> dict[str, jax.Array]:
  """``embed [V, D]``, ``final_norm [D]`` and (untied) ``lm_head [D, V]``."""
  return _init_globals(key, cfg.vocab_size, cfg.d_model, cfg.param_dtype,
                       float(cfg.initializer_range), cfg.tie_embeddings)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _init_stacked(layers_key, idx, shapes: tuple, dtype: str, std: float):
  mats = [(name, shape) for name, shape in shapes if name not in _NORMS]

  def one_layer(i):
    values = _split_normal(jax.random.fold_in(layers_key, i), [s for _, s in mats], dtype, std)
    return dict(zip([name for name, _ in mats], values))

  out = jax.vmap(one_layer)(idx)
  for name, shape in shapes:
    if name in _NORMS:
      out[name] = jnp.ones(idx.shape + shape, dtype)
  return {name: out[name] for name, _ in shapes}


def init_layers(cfg: ModelConfig, layers_key, indices: Sequence[int]) -> dict[str, jax.Array]:
  """Canonical parameters of layers ``indices``, stacked: each ``[len(indices), *shape]``."""
  shapes = layer_param_shapes(cfg)
  spec = tuple((name, shapes[name]) for name in LAYER_PARAM_NAMES)
  return _init_stacked(layers_key, jnp.asarray(list(indices), jnp.uint32), spec,
                       cfg.param_dtype, float(cfg.initializer_range))
