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
* ``chunked``:       ``i // window == j // window`` (experimental; chunks from position 0).

Each kind is one module of ``pallas_kernels/patterns/``; this class parses, prints and validates
the spec and hands out its ``Pattern``. An unregistered kind raises ``SpecError``.

The same pattern applies to every head of a KV group (and in fact to every head of the layer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from pallas_kernels.patterns import KINDS, PATTERNS, Pattern, SpecError, get_pattern

Kind = str


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """Static attention pattern of one layer (hashable: usable as a jit static argument).

  Attributes:
    kind: a registered pattern kind (``pallas_kernels.patterns.KINDS``): ``"full"``,
      ``"sink_window"``, ``"strided"`` or the experimental ``"chunked"``.
    block: block granularity in tokens (64 or 128 typical; any power of two >= 16). For
      ``strided`` it defines the pattern; for the others it is the kernel tile and the
      granularity of the block tables.
    sink: number of leading sink tokens (``sink_window`` only).
    window: number of most recent tokens, query included (``sink_window``; a multiple of
      ``block``), or the chunk length (``chunked``).
    local_blocks: recent blocks seen, own block included (``strided`` only).
    vert_stride: every ``vert_stride``-th block from absolute block 0 is seen (``strided`` only).

  Everything a kind means lives in its ``Pattern`` (``spec.pattern``, ``pallas_kernels/patterns/``).
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
  def chunked(cls, chunk: int, block: int = 128) -> "AttentionSpec":
    return cls(kind="chunked", block=block, window=chunk)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "AttentionSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise SpecError(f"unknown attention spec field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: (int(v) if k != "kind" else str(v)) for k, v in d.items()})

  @classmethod
  def parse(cls, text: str, block: int = 128) -> "AttentionSpec":
    """Parses ``"full"``, ``"sink_window:64:4096"``, ``"strided:16:8"``, ``"chunked:8192"``
    (optional ``@block``): the kind, then its pattern's ``params`` in order."""
    body, _, blk = text.partition("@")
    parts = body.split(":")
    pattern = PATTERNS.get(parts[0])
    try:
      if blk:
        block = int(blk)
      if pattern is not None and len(parts) == len(pattern.params) + 1:
        args = {p: int(x) for p, x in zip(pattern.params, parts[1:])}
        return cls(kind=pattern.name, block=block, **args)
    except ValueError as e:
      raise SpecError(f"cannot parse attention spec {text!r}: {e}") from None
    forms = ", ".join(repr(":".join([k] + [p.upper() for p in pt.params]))
                      for k, pt in PATTERNS.items())
    raise SpecError(f"cannot parse attention spec {text!r}; expected one of {forms} "
                    "(optionally '@BLOCK')")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def __str__(self) -> str:
    return self.pattern.format(self)

  # ---------------------------------------------------------------- validation
  @property
  def pattern(self) -> Pattern:
    """This kind's ``Pattern`` (``SpecError`` for an unregistered kind)."""
    return get_pattern(self.kind)

  def validate(self) -> None:
    pattern = self.pattern
    b = self.block
    if not isinstance(b, (int, np.integer)) or b < 16 or (b & (b - 1)) != 0:
      raise SpecError(f"attention block must be a power of two >= 16, got {b!r}")
    pattern.validate(self)

  # ---------------------------------------------------------------- semantics
  @property
  def is_full(self) -> bool:
    return self.pattern.only_causal

  def allowed(self, qpos, kpos, xp=np):
    """Token-level predicate (broadcasting): causal and the pattern's ``visible``. ``xp`` is
    numpy or jax.numpy (the predicate uses operators only)."""
    del xp
    causal = kpos <= qpos
    pattern = self.pattern
    if pattern.only_causal:
      return causal
    return causal & pattern.visible(qpos, kpos, self)

  def kv_budget(self, seq_len: int) -> int:
    """Max number of KV tokens any query of a ``seq_len`` row can see (what a cache must keep)."""
    return self.pattern.kv_budget(self, seq_len)

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
    pattern = self.pattern
    for n in (int(x) for x in doc_lens):
      if n < 1:
        raise ValueError(f"document lengths must be >= 1, got {list(doc_lens)}")
      total += pattern.doc_pairs(self, a, n)
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
