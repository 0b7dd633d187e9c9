"""Attention pattern specs: the ONE canonical definition of what each layer may attend to.

Every backend (dense reference, blocked XLA, Pallas GPU/TPU, cuDNN, decode kernels, ring/halo
sequence parallelism, the KV cache and the Hugging Face export) must implement exactly this
predicate. Positions are absolute token positions inside a (packed) row, starting at 0.

Query at position ``i`` may see key at position ``j`` iff ``j <= i`` (causal), both tokens carry
the same segment id (packed documents never see each other), and the pattern allows it:

* ``full``:          always.
* ``sink_window``:   ``j < sink`` or ``i - j < window``  (the window includes the query itself,
                     so ``window=1`` sees only itself; the sinks are the first ``sink`` tokens of
                     the row).
* ``strided``:       with ``qb = i // block`` and ``kb = j // block``:
                     ``qb - kb < local_blocks`` or ``kb % vert_stride == 0``  (blocks counted from
                     absolute position 0, so block 0 always acts as a sink; ``local_blocks``
                     includes the query's own block).

The same pattern applies to every head of a KV group (and in fact to every head of the layer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

import numpy as np

Kind = Literal["full", "sink_window", "strided"]
KINDS = ("full", "sink_window", "strided")


class SpecError(ValueError):
  """An invalid attention spec (one clear line)."""


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """Static attention pattern of one layer (hashable: usable as a jit static argument).

  Attributes:
    kind: ``"full"``, ``"sink_window"`` or ``"strided"``.
    block: block granularity in tokens (64 or 128 typical; any power of two >= 16). For
      ``strided`` it defines the pattern; for the others it is the kernel tile and the
      granularity of the block tables.
    sink: number of leading sink tokens (``sink_window`` only).
    window: number of most recent tokens, query included (``sink_window`` only); must be a
      multiple of ``block``.
    local_blocks: recent blocks seen, own block included (``strided`` only).
    vert_stride: every ``vert_stride``-th block from absolute block 0 is seen (``strided`` only).
  """

  kind: Kind = "full"
  block: int = 128
  sink: int = 0
  window: int = 0
  local_blocks: int = 0
  vert_stride: int = 0

  def __post_init__(self):
    self.validate()

  # ---------------------------------------------------------------- construction helpers
  @classmethod
  def full(cls, block: int = 128) -> "AttentionSpec":
    return cls(kind="full", block=block)

  @classmethod
  def sink_window(cls, sink: int, window: int, block: int = 128) -> "AttentionSpec":
    return cls(kind="sink_window", block=block, sink=sink, window=window)

  @classmethod
  def strided(cls, local_blocks: int, vert_stride: int, block: int = 128) -> "AttentionSpec":
    return cls(kind="strided", block=block, local_blocks=local_blocks, vert_stride=vert_stride)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "AttentionSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise SpecError(f"unknown attention spec field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: (int(v) if k != "kind" else str(v)) for k, v in d.items()})

  @classmethod
  def parse(cls, text: str, block: int = 128) -> "AttentionSpec":
    """Parses ``"full"``, ``"sink_window:64:4096"`` or ``"strided:16:8"`` (optional ``@block``)."""
    body, _, blk = text.partition("@")
    if blk:
      block = int(blk)
    parts = body.split(":")
    try:
      if parts[0] == "full" and len(parts) == 1:
        return cls.full(block)
      if parts[0] == "sink_window" and len(parts) == 3:
        return cls.sink_window(int(parts[1]), int(parts[2]), block)
      if parts[0] == "strided" and len(parts) == 3:
        return cls.strided(int(parts[1]), int(parts[2]), block)
    except ValueError as e:
      raise SpecError(f"cannot parse attention spec {text!r}: {e}") from None
    raise SpecError(
        f"cannot parse attention spec {text!r}; expected 'full', 'sink_window:S:W' or "
        "'strided:LOCAL:STRIDE' (optionally '@BLOCK')")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def __str__(self) -> str:
    if self.kind == "full":
      return f"full@{self.block}"
    if self.kind == "sink_window":
      return f"sink_window:{self.sink}:{self.window}@{self.block}"
    return f"strided:{self.local_blocks}:{self.vert_stride}@{self.block}"

  # ---------------------------------------------------------------- validation
  def validate(self) -> None:
    if self.kind not in KINDS:
      raise SpecError(f"attention kind {self.kind!r} is not one of {KINDS}")
    b = self.block
    if not isinstance(b, (int, np.integer)) or b < 16 or (b & (b - 1)) != 0:
      raise SpecError(f"attention block must be a power of two >= 16, got {b!r}")
    if self.kind == "full":
      if self.sink or self.window or self.local_blocks or self.vert_stride:
        raise SpecError(f"a 'full' spec takes no sink/window/local_blocks/vert_stride: {self!r}")
    elif self.kind == "sink_window":
      if self.sink < 0:
        raise SpecError(f"sink must be >= 0, got {self.sink}")
      if self.window <= 0:
        raise SpecError(f"sink_window needs window > 0, got {self.window}")
      if self.window % b:
        raise SpecError(f"window {self.window} is not a multiple of the block {b}")
      if self.local_blocks or self.vert_stride:
        raise SpecError("sink_window takes no local_blocks/vert_stride")
    else:
      if self.local_blocks < 1:
        raise SpecError(f"strided needs local_blocks >= 1, got {self.local_blocks}")
      if self.vert_stride < 1:
        raise SpecError(f"strided needs vert_stride >= 1, got {self.vert_stride}")
      if self.sink or self.window:
        raise SpecError("strided takes no sink/window")

  # ---------------------------------------------------------------- semantics
  @property
  def is_full(self) -> bool:
    return self.kind == "full"

  def allowed(self, qpos, kpos, xp=np):
    """Token-level predicate (broadcasting). ``xp`` is numpy or jax.numpy."""
    causal = kpos <= qpos
    if self.kind == "full":
      return causal
    if self.kind == "sink_window":
      return causal & ((kpos < self.sink) | (qpos - kpos < self.window))
    qb = qpos // self.block
    kb = kpos // self.block
    return causal & (((qb - kb) < self.local_blocks) | ((kb % self.vert_stride) == 0))

  def kv_budget(self, seq_len: int) -> int:
    """Max number of KV tokens any query of a ``seq_len`` row can see (what a cache must keep)."""
    if self.kind == "full":
      return seq_len
    if self.kind == "sink_window":
      return min(seq_len, self.sink + self.window)
    n_blocks = -(-seq_len // self.block)
    strided = -(-n_blocks // self.vert_stride)
    return min(seq_len, (self.local_blocks + strided) * self.block)

  def visible_pairs(self, seq_len: int) -> int:
    """Exact number of (query, key) pairs with ``allowed`` true in one causal row of ``seq_len``
    (one document: ``visible_pairs_packed([seq_len])``).

    Used for useful-FLOP accounting (MFU, TFLOP/s). O(seq_len) numpy time.
    """
    L = int(seq_len)
    return self.visible_pairs_packed([L]) if L > 0 else 0

  def visible_pairs_packed(self, doc_lens) -> int:
    """Visible (query, key) pairs of one row packed with documents of ``doc_lens`` tokens (in
    order): ``allowed`` AND same document, the reference's segment-id semantics (sinks and
    strided blocks stay at absolute row positions). O(row length) time."""
    total, a = 0, 0
    for n in (int(x) for x in doc_lens):
      if n < 1:
        raise ValueError(f"document lengths must be >= 1, got {list(doc_lens)}")
      i = None if self.kind == "full" else np.arange(a, a + n, dtype=np.int64)
      if self.kind == "full":
        total += n * (n + 1) // 2
      elif self.kind == "sink_window":
        win = np.minimum(i - a + 1, self.window)
        sinks = np.maximum(0, np.minimum(self.sink, i - win + 1) - a)
        total += int(np.sum(win + sinks))
      else:
        b, lb, vs = self.block, self.local_blocks, self.vert_stride
        lo = np.maximum(0, i // b - lb + 1)                 # first local block of each query
        total += int(np.sum(i - np.maximum(a, lo * b) + 1))  # local blocks, clipped to the doc
        kb = np.arange(int(lo.max()) + 1, dtype=np.int64)
        per = np.where(kb % vs == 0, np.maximum(0, (kb + 1) * b - np.maximum(a, kb * b)), 0)
        below = np.concatenate([[0], np.cumsum(per)])        # strided tokens in blocks < lo
        total += int(np.sum(below[lo]))
      a += n
    return int(total)


FULL = AttentionSpec.full()


def as_spec(x: Any) -> AttentionSpec:
  """Coerces a spec, a dict, or a parseable string into an AttentionSpec."""
  if isinstance(x, AttentionSpec):
    return x
  if isinstance(x, str):
    return AttentionSpec.parse(x)
  if isinstance(x, Mapping) or hasattr(x, "to_dict"):
    d = x.to_dict() if hasattr(x, "to_dict") else dict(x)
    return AttentionSpec.from_dict(d)
  raise SpecError(f"cannot turn {type(x).__name__} into an AttentionSpec")


def dense_mask(spec: AttentionSpec, q_len: int, kv_len: int | None = None, *, q_offset: int = 0,
               kv_offset: int = 0, q_segment_ids=None, kv_segment_ids=None) -> np.ndarray:
  """Dense boolean mask [..., q_len, kv_len] (numpy). FOR TESTS ONLY: allocates L x L."""
  kv_len = q_len if kv_len is None else kv_len
  qpos = np.arange(q_len)[:, None] + q_offset
  kpos = np.arange(kv_len)[None, :] + kv_offset
  m = spec.allowed(qpos, kpos)
  if q_segment_ids is not None:
    qs = np.asarray(q_segment_ids)[..., :, None]
    ks = np.asarray(kv_segment_ids if kv_segment_ids is not None else q_segment_ids)[..., None, :]
    m = m & (qs == ks)
  return m
