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
  ``"value_proj"``) and ``"context"``.
* ``save_attention``: only the attention kernel's residuals ``"attn_out"`` and ``"attn_lse"``:
  q, k, v (projections + RoPE) and the MLP are recomputed, the attention kernel forward is not.
* ``save_attention_qkv``: ``save_attention`` plus the post-RoPE q, k, v: only norms and the MLP
  are recomputed.
* ``minimal_with_attention``: ``minimal`` plus ``"attn_out"`` / ``"attn_lse"``: the GPU
  analogue of ``minimal_with_context`` without the kernel re-run.
* ``everything_saveable``: save everything (remat boundary only; for debugging).

Names tagged with ``jax.ad_checkpoint.checkpoint_name`` inside a layer: ``query_proj``,
``key_proj``, ``value_proj``, ``context``, ``mlp_gate``, ``mlp_up`` (``layers.py``), and, inside
every attention backend's ``custom_vjp`` forward rule (``pallas_kernels._common.tag_residuals``;
also the ring's), ``attn_out`` / ``attn_lse``: the kernel output and lse the backward reads.

JAX's opt-in ``jax_remat3`` (off by default in jax 0.10.2; its default in 0.11.2 was not read
here) sees neither the kernel names (they sit in custom_vjp forward rules, which it does not
trace) nor the ``dots_*`` policies: ``remat_policy`` warns for the policies in
``REMAT3_UNSEEN`` when it is on.

Why the kernel names: the attention backward needs the forward's ``out`` and ``lse`` (plus q, k,
v). Policies that do not save ``attn_out`` / ``attn_lse`` -- ``full``, ``save_context``,
``minimal_with_context`` and ``save_qkv_context`` included -- re-run the attention kernel forward
in the backward pass (at 128K tokens on an H100 ~1.5 s of a 13 s 7B-shaped step) even where the
output itself (``context``) is saved. Saving ``context`` AND ``attn_out`` would store the same
values twice (``context`` is ``attn_out`` un-padded, or its lse merge under halo attention), so
the ``*attention*`` policies never save ``context``: it is recomputed from ``attn_out`` for free.

Memory saved per layer and micro-batch (``B`` rows of ``T`` local tokens, ``Hq`` local query
heads, head dim ``Dh``, bf16 compute, ``Dm`` = d_model):

* layer input (every policy): ``B * T * Dm * 2`` bytes;
* ``attn_out``: ``B * T * Hq * Dh * 2`` bytes (the same size as ``context``);
* ``attn_lse``: ``B * Hq * T * 4`` bytes (fp32; ``2 / Dh`` of ``attn_out``, 1.6% at Dh=128);
* q, k, v: ``B * T * (Hq + 2 Hkv) * Dh * 2`` bytes.

E.g. 7B-shaped (Dm = Hq Dh = 4096, 32 heads) at T = 128K, B = 1: input 1 GiB, ``attn_out``
1 GiB, ``attn_lse`` 16 MiB per layer. Sparse layers whose backend splits the call (halo
attention's local + global parts under sequence parallelism) save one out / lse per kernel call.
The memory planner (``longgen_jax.parallel.memory.saved_bytes_per_token``) uses these numbers.
"""

from __future__ import annotations

import warnings
from typing import Callable

import jax

from pallas_kernels._common import ATTN_LSE, ATTN_OUT

_cp = jax.checkpoint_policies
QKV_NAMES = ("query_proj", "key_proj", "value_proj")
ATTENTION_NAMES = (ATTN_OUT, ATTN_LSE)

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
    "save_qkv_context": lambda: _cp.save_only_these_names(*QKV_NAMES, "context"),
    "save_attention": lambda: _cp.save_only_these_names(*ATTENTION_NAMES),
    "save_attention_qkv": lambda: _cp.save_only_these_names(*QKV_NAMES, *ATTENTION_NAMES),
    "minimal_with_attention": lambda: _cp.save_from_both_policies(
        _cp.dots_with_no_batch_dims_saveable, _cp.save_only_these_names(*ATTENTION_NAMES)),
    "everything_saveable": lambda: _cp.everything_saveable,
}


# Policies JAX's opt-in ``jax_remat3`` does not honour: it applies a policy to the primal trace
# only, where a custom_vjp's forward rule (home of the kernels' ``attn_out`` / ``attn_lse`` tags)
# is not traced, and it knows name policies only (``dots_*`` act as ``full`` there).
REMAT3_UNSEEN = tuple(n for n in REMAT_POLICIES if "attention" in n or "dots" in n
                      or n.startswith("minimal"))


def jax_remat3_on() -> bool:
  """Whether JAX's newer remat (``jax_remat3``; opt-in in jax 0.10.2) is switched on."""
  from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top
  flag = getattr(jax_config, "remat3", None)
  return bool(flag is not None and flag.value)


def remat_policy(name: str) -> Callable[..., bool] | None:
  """The ``jax.checkpoint`` policy of ``name`` (None for ``"none"``: caller skips remat).

  Warns when ``jax_remat3`` is on and ``name`` is one it does not honour: on CPU, jax 0.10.2, the
  step then runs each attention kernel forward twice under ``save_attention``
  (``tests/test_remat_residuals.py``).
  """
  if name not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {name!r}; known: {tuple(REMAT_POLICIES)}")
  if name in REMAT3_UNSEEN and jax_remat3_on():
    warnings.warn(
        f"remat {name!r} under jax_remat3 (JAX_REMAT3): that remat does not see the attention "
        "kernels' attn_out/attn_lse tags (custom_vjp forward rules) nor dots policies, so layers "
        "recompute more than the policy says; switch jax_remat3 off for the documented policies",
        stacklevel=2)
  return REMAT_POLICIES[name]()
