"""Tensor plan: canonical parameter <-> Hugging Face Llama tensor (name, shape, layout).

Both sides use the rotate-half RoPE layout and an explicit ``1/sqrt(head_dim)``, so every mapping
is a transpose and / or reshape (bit exact both ways):

  copy       canonical == HF                              embed [V,D], norms [D]
  transpose  canonical [a,b] == HF [b,a]                  lm_head, w_gate, w_up, w_down
  in_heads   canonical [D,H,Dh] == HF [H*Dh, D].T          wq, wk, wv
  out_heads  canonical [H,Dh,D] == HF [D, H*Dh].T          wo
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from longgen_jax.model.config import ModelConfig

Path = tuple  # ("embed",) or ("layers", i, "wq")

_LAYER = (  # canonical name, HF suffix, layout
    ("attn_norm", "input_layernorm.weight", "copy"),
    ("wq", "self_attn.q_proj.weight", "in_heads"),
    ("wk", "self_attn.k_proj.weight", "in_heads"),
    ("wv", "self_attn.v_proj.weight", "in_heads"),
    ("wo", "self_attn.o_proj.weight", "out_heads"),
    ("mlp_norm", "post_attention_layernorm.weight", "copy"),
    ("w_gate", "mlp.gate_proj.weight", "transpose"),
    ("w_up", "mlp.up_proj.weight", "transpose"),
    ("w_down", "mlp.down_proj.weight", "transpose"),
)


@dataclasses.dataclass(frozen=True)
class TensorPlan:
  """One parameter: where it lives in the canonical tree and in the HF checkpoint."""
  path: Path
  hf_name: str
  layout: str
  shape: tuple[int, ...]      # canonical shape
  hf_shape: tuple[int, ...]   # HF (PyTorch nn.Linear [out, in]) shape
  head_dim: int = 0

  @property
  def key(self) -> str:
    return "/".join(str(p) for p in self.path)


def _hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if layout == "copy":
    return shape
  if layout == "transpose":
    return (shape[1], shape[0])
  if layout == "in_heads":
    return (shape[1] * shape[2], shape[0])
  return (shape[2], shape[0] * shape[1])


def tensor_plan(cfg: ModelConfig) -> list[TensorPlan]:
  """Every parameter of ``cfg`` in canonical order (embed, layers..., final_norm, lm_head)."""
  D, F, V, Dh = cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.head_dim
  Hq, Hkv = cfg.n_heads, cfg.n_kv_heads
  shapes = {"attn_norm": (D,), "wq": (D, Hq, Dh), "wk": (D, Hkv, Dh), "wv": (D, Hkv, Dh),
            "wo": (Hq, Dh, D), "mlp_norm": (D,), "w_gate": (D, F), "w_up": (D, F),
            "w_down": (F, D)}

  def plan(path, hf_name, layout, shape):
    return TensorPlan(path, hf_name, layout, shape, _hf_shape(layout, shape), Dh)

  out = [plan(("embed",), "model.embed_tokens.weight", "copy", (V, D))]
  for i in range(cfg.n_layers):
    for name, suffix, layout in _LAYER:
      out.append(plan(("layers", i, name), f"model.layers.{i}.{suffix}", layout, shapes[name]))
  out.append(plan(("final_norm",), "model.norm.weight", "copy", (D,)))
  if not cfg.tie_embeddings:
    out.append(plan(("lm_head",), "lm_head.weight", "transpose", (D, V)))
  return out


def _full(s: slice, n: int) -> tuple[int, int]:
  start, stop, step = s.indices(n)
  if step != 1:
    raise ValueError(f"strided shard index {s} is not supported")
  return start, stop


def hf_read_index(p: TensorPlan, index: tuple[slice, ...]) -> tuple[tuple[slice, ...], Callable]:
  """For a canonical shard ``index``: the HF slice to read and the function that turns it into
  the canonical shard (so a device only reads its own part of the tensor)."""
  index = tuple(index) + (slice(None),) * (len(p.shape) - len(index))
  if p.layout == "copy":
    return index, lambda a: a
  if p.layout == "transpose":
    return (index[1], index[0]), lambda a: a.T
  dh = p.head_dim
  if p.layout == "in_heads":
    h0, h1 = _full(index[1], p.shape[1])
    rows = slice(h0 * dh, h1 * dh)
    return (rows, index[0]), lambda a: a.T.reshape(a.shape[1], h1 - h0, dh)[:, :, index[2]]
  h0, h1 = _full(index[0], p.shape[0])
  cols = slice(h0 * dh, h1 * dh)
  return (index[2], cols), lambda a: a.T.reshape(h1 - h0, dh, a.shape[0])[:, index[1], :]


def to_hf(p: TensorPlan, a: np.ndarray) -> np.ndarray:
  """Canonical array -> HF layout (C-contiguous)."""
  if p.layout == "transpose":
    a = a.T
  elif p.layout == "in_heads":
    a = a.reshape(a.shape[0], -1).T
  elif p.layout == "out_heads":
    a = a.reshape(-1, a.shape[-1]).T
  return np.ascontiguousarray(a)


def get_path(tree, path: Path):
  for k in path:
    tree = tree[k]
  return tree
