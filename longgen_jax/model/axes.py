"""Logical axis names of every parameter, for the sharding rules of ``longgen_jax/parallel``.

Names: ``vocab``, ``embed`` (d_model), ``q_heads``, ``kv_heads``, ``head_dim``, ``mlp`` (ffn),
and ``layers`` for the leading stacking axis of scanned segments. The model itself carries no
sharding metadata (that API moved across flax versions); ``param_axes(model)`` mirrors
``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` with a tuple of names per leaf.
"""

from __future__ import annotations

from typing import Any

GLOBAL_PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"), "final_norm": ("embed",), "lm_head": ("embed", "vocab")}

LAYER_PARAM_AXES: dict[str, tuple[str, ...]] = {
    "attn_norm": ("embed",), "wq": ("embed", "q_heads", "head_dim"),
    "wk": ("embed", "kv_heads", "head_dim"), "wv": ("embed", "kv_heads", "head_dim"),
    "wo": ("q_heads", "head_dim", "embed"), "mlp_norm": ("embed",), "w_gate": ("embed", "mlp"),
    "w_up": ("embed", "mlp"), "w_down": ("mlp", "embed")}

STACK_AXIS = "layers"


def param_axes(model) -> dict[str, Any]:
  """Axis-name tuples in the structure of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``."""
  out: dict[str, Any] = {k: v for k, v in GLOBAL_PARAM_AXES.items()
                         if k != "lm_head" or not model.cfg.tie_embeddings}
  segments: dict[int, Any] = {}
  for i, seg in enumerate(model.plan):
    if seg.scanned:
      segments[i] = {"layers": {j: {k: (STACK_AXIS,) + v for k, v in LAYER_PARAM_AXES.items()}
                                for j in range(len(seg.specs))}}
    else:
      segments[i] = dict(LAYER_PARAM_AXES)
  out["segments"] = segments
  return out
