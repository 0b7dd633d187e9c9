"""Rematerialisation (activation checkpointing) policies by name.

``"none"`` disables remat. Every other name wraps each decoder layer in ``nnx.remat`` with the
``jax.checkpoint`` policy below (what may be SAVED for the backward pass; the rest is recomputed):

* ``full`` / ``nothing_saveable``: save nothing but the layer input (least memory).
* ``dots_saveable``: save every matmul output (``checkpoint_dots``).
* ``dots_with_no_batch_dims_saveable`` / ``minimal``: save the projection / MLP matmul outputs
  (no batch dims), recompute attention scores (MaxText "minimal").
* ``save_context``: save only the attention output (``"context"``, the tensor before ``wo``).
* ``minimal_with_context``: ``minimal`` plus ``"context"`` (MaxText's GPU default).
* ``save_qkv_context``: the post-RoPE q, k, v (``"query_proj"``, ``"key_proj"``,
  ``"value_proj"``) and ``"context"``: attention is never recomputed.
* ``everything_saveable``: save everything (remat boundary only; for debugging).

Names tagged with ``jax.ad_checkpoint.checkpoint_name`` inside a layer: ``query_proj``,
``key_proj``, ``value_proj``, ``context``, ``mlp_gate``, ``mlp_up``.
"""

from __future__ import annotations

from typing import Callable

import jax

_cp = jax.checkpoint_policies

REMAT_POLICIES: dict[str, Callable[[], Callable[..., bool] | None]] = {
    "none": lambda: None,
    "full": lambda: _cp.nothing_saveable,
    "nothing_saveable": lambda: _cp.nothing_saveable,
    "dots_saveable": lambda: _cp.dots_saveable,
    "dots_with_no_batch_dims_saveable": lambda: _cp.dots_with_no_batch_dims_saveable,
    "minimal": lambda: _cp.dots_with_no_batch_dims_saveable,
    "save_context": lambda: _cp.save_only_these_names("context"),
    "minimal_with_context": lambda: _cp.save_from_both_policies(
        _cp.dots_with_no_batch_dims_saveable, _cp.save_only_these_names("context")),
    "save_qkv_context": lambda: _cp.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "context"),
    "everything_saveable": lambda: _cp.everything_saveable,
}


def remat_policy(name: str) -> Callable[..., bool] | None:
  """The ``jax.checkpoint`` policy of ``name`` (None for ``"none"``: caller skips remat)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {name!r}; known: {tuple(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]()
