"""Per-layer KV cache for LongGen exports: each sparse layer keeps only the keys it can still see.

Shipped verbatim into hybrid exports next to ``modeling_longgen.py``. Keys are cached after RoPE at
their original positions, so dropping a key never changes the keys that remain. Every cache slot
carries its absolute position and a validity flag (False for padding), so the attention mask of
any layer is a pure function of (query position, key position) -- the same predicate as
``pallas_kernels.AttentionSpec.allowed``.

Eviction after each update, with ``nxt`` = 1 + the largest position seen in the row (all future
queries have positions >= nxt):
  full:         keep everything;
  sink_window:  keep j < sink and j > nxt - window (the last window - 1 tokens);
  strided:      keep blocks kb with kb % vert_stride == 0 or kb > nxt // block - local_blocks;
  chunked:      keep j >= (nxt // window) * window (the current chunk).
Padding slots are dropped. With a batch, a slot is kept if any row still needs it.

Torch-only mirror of ``pallas_kernels/patterns/`` (``visible`` and ``still_needed`` of each
kind): tests/test_hf_patterns.py checks both against the pattern modules on every registered kind.
An unknown kind raises.
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer


def _fdiv(x, d):
  return torch.div(x, d, rounding_mode="floor")


def _unknown(spec: dict):
  return ValueError(f"LongGen attention kind {spec['kind']!r} is not one of "
                    "('full', 'sink_window', 'strided', 'chunked')")


def pattern_allows(spec: dict, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
  """Boolean mask (broadcasting ``qpos`` against ``kpos``): may query ``qpos`` see key ``kpos``."""
  causal = kpos <= qpos
  kind = spec["kind"]
  if kind == "full":
    return causal
  if kind == "sink_window":
    return causal & ((kpos < spec["sink"]) | (qpos - kpos < spec["window"]))
  if kind == "strided":
    qb, kb = _fdiv(qpos, spec["block"]), _fdiv(kpos, spec["block"])
    return causal & (((qb - kb) < spec["local_blocks"]) | (kb % spec["vert_stride"] == 0))
  if kind == "chunked":
    return causal & (_fdiv(qpos, spec["window"]) == _fdiv(kpos, spec["window"]))
  raise _unknown(spec)


def still_needed(spec: dict, kpos: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
  """Whether a cached key at ``kpos`` is visible to some query at position >= ``nxt``."""
  kind = spec["kind"]
  if kind == "full":
    return torch.ones_like(kpos, dtype=torch.bool)
  if kind == "sink_window":
    return (kpos < spec["sink"]) | (kpos > nxt - spec["window"])
  if kind == "strided":
    kb, qb = _fdiv(kpos, spec["block"]), _fdiv(nxt, spec["block"])
    return (kb % spec["vert_stride"] == 0) | (kb > qb - spec["local_blocks"])
  if kind == "chunked":
    return kpos >= _fdiv(nxt, spec["window"]) * spec["window"]
  raise _unknown(spec)


class LongGenCacheLayer(DynamicLayer):
  """A DynamicLayer that tracks each slot's position and validity and evicts by pattern."""

  is_croppable = False

  def __init__(self, spec: dict):
    super().__init__()
    self.spec = dict(spec)
    self.is_sliding = spec["kind"] != "full"
    self.positions = None   # [B, K] int64, absolute position of every kept slot
    self.valid = None       # [B, K] bool, False for padding
    self.cumulative_length = 0

  def lazy_initialization(self, key_states, value_states):
    b, h, _, d = key_states.shape
    self.device = key_states.device
    self.keys = key_states.new_zeros((b, h, 0, d))
    self.values = value_states.new_zeros((b, value_states.shape[1], 0, value_states.shape[-1]))
    self.positions = torch.zeros((b, 0), dtype=torch.long, device=self.device)
    self.valid = torch.zeros((b, 0), dtype=torch.bool, device=self.device)
    self.is_initialized = True

  def append(self, key_states, value_states, positions, valid):
    """Adds new tokens; returns (keys, values, positions, valid) of old kept + new, then evicts."""
    if not self.is_initialized:
      self.lazy_initialization(key_states, value_states)
    self.cumulative_length += key_states.shape[-2]
    keys = torch.cat([self.keys, key_states], dim=-2)
    values = torch.cat([self.values, value_states], dim=-2)
    pos = torch.cat([self.positions, positions.to(self.positions.dtype)], dim=-1)
    val = torch.cat([self.valid, valid.to(torch.bool)], dim=-1)
    self._evict(keys, values, pos, val)
    return keys, values, pos, val

  def _evict(self, keys, values, pos, val):
    if self.spec["kind"] == "full":
      self.keys, self.values, self.positions, self.valid = keys, values, pos, val
      return
    nxt = torch.where(val, pos, torch.full_like(pos, -1)).amax(dim=-1, keepdim=True) + 1
    keep = (still_needed(self.spec, pos, nxt) & val).any(dim=0)
    idx = keep.nonzero().squeeze(-1)
    self.keys = keys.index_select(-2, idx)
    self.values = values.index_select(-2, idx)
    self.positions = pos.index_select(-1, idx)
    self.valid = val.index_select(-1, idx)

  def update(self, key_states, value_states, *args, **kwargs):
    """Standard Cache API: positions continue from the tokens seen so far, no padding."""
    b, _, t, _ = key_states.shape
    pos = torch.arange(self.cumulative_length, self.cumulative_length + t, device=key_states.device)
    pos = pos[None].expand(b, t)
    valid = torch.ones_like(pos, dtype=torch.bool)
    keys, values, _, _ = self.append(key_states, value_states, pos, valid)
    return keys, values

  def get_seq_length(self) -> int:
    return self.cumulative_length

  def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
    kept = 0 if self.keys is None else self.keys.shape[-2]
    return kept + query_length, 0

  def get_max_length(self) -> int:
    if self.spec["kind"] == "sink_window":
      return self.spec["sink"] + self.spec["window"] - 1
    return -1

  def kept_tokens(self) -> int:
    """Number of KV slots currently held."""
    return 0 if self.keys is None else int(self.keys.shape[-2])

  def reset(self) -> None:
    super().reset()
    self.positions = self.valid = None
    self.cumulative_length = 0

  def crop(self, tokens_to_remove: int) -> None:
    raise NotImplementedError("LongGenCacheLayer cannot be cropped (evicted tokens are gone); "
                              "assisted decoding / rollback is not supported")

  def reorder_cache(self, beam_idx):
    if self.kept_tokens():
      super().reorder_cache(beam_idx)
      self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))
      self.valid = self.valid.index_select(0, beam_idx.to(self.valid.device))

  def batch_repeat_interleave(self, repeats: int) -> None:
    if self.kept_tokens():
      super().batch_repeat_interleave(repeats)
      self.positions = self.positions.repeat_interleave(repeats, dim=0)
      self.valid = self.valid.repeat_interleave(repeats, dim=0)

  def batch_select_indices(self, indices) -> None:
    if self.kept_tokens():
      super().batch_select_indices(indices)
      self.positions = self.positions[indices, ...]
      self.valid = self.valid[indices, ...]


class LongGenCache(Cache):
  """One LongGenCacheLayer per model layer, built from ``config.longgen_layers``."""

  def __init__(self, config=None, layers_spec=None):
    specs = layers_spec if layers_spec is not None else config.longgen_layers
    super().__init__(layers=[LongGenCacheLayer(s) for s in specs])

  def append(self, layer_idx: int, key_states, value_states, positions, valid):
    """Adds tokens to one layer; returns (keys, values, key_positions, key_valid) to attend to."""
    return self.layers[layer_idx].append(key_states, value_states, positions, valid)

  def kept_tokens(self) -> list[int]:
    """KV slots held per layer (bounded for sink_window layers)."""
    return [layer.kept_tokens() for layer in self.layers]


__all__ = ["LongGenCache", "LongGenCacheLayer", "pattern_allows", "still_needed"]
