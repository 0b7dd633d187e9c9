"""Canonical parameters: the interchange format of HF import/export, inference and tests.

``docs/architecture.md`` §4::

  {"embed": [V, D], "final_norm": [D], "lm_head": [D, V] (absent when tied),
   "layers": [ {"attn_norm": [D], "wq": [D, Hq, Dh], "wk": [D, Hkv, Dh], "wv": [D, Hkv, Dh],
                "wo": [Hq, Dh, D], "mlp_norm": [D], "w_gate": [D, F], "w_up": [D, F],
                "w_down": [F, D]}, ... one per layer ] }

``to_canonical`` unstacks scanned segments into one dict per layer; ``load_canonical`` stacks them
back for whatever grouping the target model uses, so a checkpoint moves freely between
``scan_layers`` settings. Loading checks every key and shape and names the first bad tensor.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longgen_jax.model.config import ModelConfig
from longgen_jax.model.layers import LAYER_PARAM_NAMES, layer_param_shapes
from longgen_jax.model.llama import Llama


def canonical_shapes(cfg: ModelConfig) -> dict[str, Any]:
  """The canonical tree of shapes (tuples) for ``cfg``."""
  tree: dict[str, Any] = {"embed": (cfg.vocab_size, cfg.d_model), "final_norm": (cfg.d_model,)}
  if not cfg.tie_embeddings:
    tree["lm_head"] = (cfg.d_model, cfg.vocab_size)
  tree["layers"] = [layer_param_shapes(cfg) for _ in range(cfg.n_layers)]
  return tree


def param_count(cfg: ModelConfig) -> int:
  """Exact number of parameters (embedding, untied LM head, norms included)."""
  per_layer = sum(int(np.prod(s)) for s in layer_param_shapes(cfg).values())
  head = 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size
  return cfg.vocab_size * cfg.d_model + head + cfg.d_model + cfg.n_layers * per_layer


def abstract_model(cfg: ModelConfig) -> Llama:
  """A ``Llama`` whose parameters are ``jax.ShapeDtypeStruct`` (no memory; for sharded init)."""
  return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def _unstack(v, r: int):
  """Layer ``r`` of a stacked value; an abstract one keeps its sharding minus the layer axis."""
  if isinstance(v, jax.ShapeDtypeStruct):
    sharding = v.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(sharding.mesh,
                                            jax.sharding.PartitionSpec(*sharding.spec[1:]))
    return jax.ShapeDtypeStruct(v.shape[1:], v.dtype, sharding=sharding)
  return v[r]


def _iter_layers(model: Llama):
  """Yields ``(indices, stacked, DecoderLayer)`` for every layer module of ``model``."""
  for seg, module in zip(model.plan, model.segments):
    if seg.scanned:
      for j, layer in enumerate(module.layers):
        yield [seg.layer_index(r, j) for r in range(seg.repeats)], True, layer
    else:
      yield [seg.start], False, module


def to_canonical(model: Llama) -> dict[str, Any]:
  """The model's parameters as a canonical tree (arrays in ``param_dtype``; abstract stays
  abstract, with each leaf's sharding: the trainer's ``init_from`` reads into those)."""
  cfg = model.cfg
  tree: dict[str, Any] = {"embed": model.embed.get_value(),
                          "final_norm": model.final_norm.get_value()}
  if not cfg.tie_embeddings:
    tree["lm_head"] = model.lm_head.get_value()
  layers: list[Any] = [None] * cfg.n_layers
  for indices, stacked, layer in _iter_layers(model):
    values = {name: getattr(layer, name).get_value() for name in LAYER_PARAM_NAMES}
    for r, idx in enumerate(indices):
      layers[idx] = {k: (_unstack(v, r) if stacked else v) for k, v in values.items()}
  tree["layers"] = layers
  return tree


def _check_array(name: str, x: Any, shape: tuple[int, ...], cfg: ModelConfig,
                 strict_dtype: bool) -> None:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name}: expected an array, got {type(x).__name__}")
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name}: shape {tuple(x.shape)} != expected {tuple(shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name}: dtype {x.dtype} is not a floating dtype")
  if strict_dtype and jnp.dtype(x.dtype) != jnp.dtype(cfg.param_dtype):
    raise ValueError(f"{name}: dtype {x.dtype} != param_dtype {cfg.param_dtype}")


def check_canonical(cfg: ModelConfig, tree: Mapping[str, Any], *,
                    strict_dtype: bool = False) -> None:
  """Raises ``ValueError`` naming the first missing, unexpected or mis-shaped tensor."""
  want = canonical_shapes(cfg)
  if not isinstance(tree, Mapping):
    raise ValueError(f"canonical tree must be a mapping, got {type(tree).__name__}")
  missing = sorted(set(want) - set(tree))
  extra = sorted(set(tree) - set(want))
  if missing or extra:
    raise ValueError(f"canonical tree: missing {missing}, unexpected {extra} "
                     f"(tie_embeddings={cfg.tie_embeddings})")
  for name in ("embed", "final_norm", "lm_head"):
    if name in want:
      _check_array(name, tree[name], want[name], cfg, strict_dtype)
  layers = tree["layers"]
  if len(layers) != cfg.n_layers:
    raise ValueError(f"layers: {len(layers)} entries != n_layers {cfg.n_layers}")
  for i, (p, shapes) in enumerate(zip(layers, want["layers"])):
    missing = sorted(set(shapes) - set(p))
    extra = sorted(set(p) - set(shapes))
    if missing or extra:
      raise ValueError(f"layers[{i}]: missing {missing}, unexpected {extra}")
    for k, shape in shapes.items():
      _check_array(f"layers[{i}].{k}", p[k], shape, cfg, strict_dtype)


def _assign(var: nnx.Variable, value, dtype) -> None:
  """Sets ``var`` to ``value`` cast to ``dtype``, keeping ``var``'s sharding when it has one.

  A host (numpy) value going to a sharded variable is copied shard by shard
  (``jax.make_array_from_callback``), so no device ever holds the whole tensor.
  """
  sharding = getattr(var.get_value(), "sharding", None)
  if sharding is None or isinstance(value, jax.Array):
    value = jnp.asarray(value, dtype=dtype)
    if sharding is not None:
      value = jax.device_put(value, sharding)
  else:
    host = np.asarray(value)
    value = jax.make_array_from_callback(host.shape, sharding,
                                         lambda idx: np.asarray(host[idx], dtype=dtype))
  var.set_value(value)


def _stack(values: list[Any]):
  """Stacks on the host when every value is a host array, else on device."""
  if any(isinstance(v, jax.Array) for v in values):
    return jnp.stack([jnp.asarray(v) for v in values])
  return np.stack([np.asarray(v) for v in values])


def load_canonical(model: Llama, tree: Mapping[str, Any], *, strict_dtype: bool = False) -> Llama:
  """Copies a canonical tree into ``model`` (in place; returns it).

  Values are cast to ``cfg.param_dtype`` (``strict_dtype=True`` refuses other dtypes) and take
  the sharding of the variable they replace (host arrays are copied shard by shard).
  """
  cfg = model.cfg
  check_canonical(cfg, tree, strict_dtype=strict_dtype)
  dt = jnp.dtype(cfg.param_dtype)
  _assign(model.embed, tree["embed"], dt)
  _assign(model.final_norm, tree["final_norm"], dt)
  if not cfg.tie_embeddings:
    _assign(model.lm_head, tree["lm_head"], dt)
  layers = tree["layers"]
  for indices, stacked, layer in _iter_layers(model):
    for name in LAYER_PARAM_NAMES:
      if stacked:
        value = _stack([layers[i][name] for i in indices])
      else:
        value = layers[indices[0]][name]
      _assign(getattr(layer, name), value, dt)
  return model


def from_canonical(cfg: ModelConfig, tree: Mapping[str, Any],
                   rngs: nnx.Rngs | None = None) -> Llama:
  """A ``Llama`` holding ``tree``. Without ``rngs`` no random init runs (abstract then filled)."""
  check_canonical(cfg, tree)
  model = abstract_model(cfg) if rngs is None else Llama(cfg, rngs=rngs)
  return load_canonical(model, tree)
