"""Model configuration: ``RopeConfig`` and ``ModelConfig`` (frozen, validated, serialisable).

Both dataclasses are frozen and hashable, so a config can be a jit static argument and can sit in
an NNX module as static metadata. Every invalid combination raises ``ConfigError`` (a
``ValueError``) with ONE line that names the offending field.

The layer layout (which attention pattern each layer uses) is ``ModelConfig.layers``: a tuple of
``AttentionSpec``, one per layer. ``ModelConfig.from_dict`` also accepts the short layout forms of
``docs/architecture.md`` §6 (see ``layout.resolve_layers``) and ``to_dict`` writes the shortest
form that reproduces the exact same layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pallas_kernels.spec import AttentionSpec, SpecError, as_spec

from longgen_jax.model.errors import ConfigError
from longgen_jax.model import layout as layout_lib
from longgen_jax.model.remat import REMAT_POLICIES

ROPE_SCALINGS = ("none", "linear", "dynamic_ntk", "yarn", "llama3")
# Hugging Face ``rope_type`` names accepted as aliases on input.
_ROPE_ALIASES = {"default": "none", "dynamic": "dynamic_ntk"}
DTYPES = ("float32", "bfloat16", "float16")
# Keys of ``ModelConfig.from_dict`` that describe the layout rather than a dataclass field.
LAYOUT_KEYS = ("layout", "sparse", "full", "n_full", "full_layers")


def _to_plain_dict(d: Any, what: str) -> dict[str, Any]:
  if hasattr(d, "to_dict") and not isinstance(d, Mapping):
    d = d.to_dict()  # ml_collections.ConfigDict
  if not isinstance(d, Mapping):
    raise ConfigError(f"{what} must be a mapping, got {type(d).__name__}")
  return dict(d)


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary position embedding, Hugging Face compatible (``rope_init_fn`` of transformers).

  Attributes:
    theta: base wavelength (``rope_theta``).
    scaling: ``"none"`` | ``"linear"`` | ``"dynamic_ntk"`` | ``"yarn"`` | ``"llama3"``.
    factor: context-extension factor (linear, dynamic_ntk, yarn, llama3); 1.0 for none.
    original_max_position: pre-training context length (HF ``original_max_position_embeddings``;
      for ``dynamic_ntk`` it plays the role of HF's ``max_position_embeddings``).
    low_freq_factor / high_freq_factor: llama3 smoothing band.
    beta_fast / beta_slow: yarn ramp bounds (in rotations).
    attention_factor: yarn scale of cos/sin; None derives it like HF (``0.1 ln(factor) + 1``, or
      the ``mscale`` / ``mscale_all_dim`` ratio when both are set).
    mscale / mscale_all_dim: yarn DeepSeek-style attention-factor terms (0 = unused).
    truncate: yarn: floor/ceil the correction range (HF default True).
  """

  theta: float = 10000.0
  scaling: str = "none"
  factor: float = 1.0
  original_max_position: int = 4096
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  attention_factor: float | None = None
  mscale: float = 0.0
  mscale_all_dim: float = 0.0
  truncate: bool = True

  def __post_init__(self):
    object.__setattr__(self, "scaling", _ROPE_ALIASES.get(self.scaling, self.scaling))
    self.validate()

  def validate(self) -> None:
    if self.scaling not in ROPE_SCALINGS:
      raise ConfigError(f"rope.scaling {self.scaling!r} is not one of {ROPE_SCALINGS}")
    if not self.theta > 0:
      raise ConfigError(f"rope.theta must be > 0, got {self.theta}")
    if self.scaling != "none" and not self.factor >= 1.0:
      raise ConfigError(f"rope.factor must be >= 1 for scaling {self.scaling!r}, got {self.factor}")
    if self.scaling in ("dynamic_ntk", "yarn", "llama3") and self.original_max_position <= 0:
      raise ConfigError(
          f"rope.original_max_position must be > 0 for {self.scaling!r}, got "
          f"{self.original_max_position}")
    if self.scaling == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
      raise ConfigError(
          f"rope llama3 needs high_freq_factor > low_freq_factor > 0, got "
          f"{self.high_freq_factor} and {self.low_freq_factor}")
    if self.scaling == "yarn" and not self.beta_fast > self.beta_slow > 0:
      raise ConfigError(
          f"rope yarn needs beta_fast > beta_slow > 0, got {self.beta_fast} and {self.beta_slow}")
    if self.attention_factor is not None and not self.attention_factor > 0:
      raise ConfigError(f"rope.attention_factor must be > 0, got {self.attention_factor}")

  @classmethod
  def from_dict(cls, d: Any) -> "RopeConfig":
    d = _to_plain_dict(d, "rope")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"unknown rope field(s) {unknown}; known: {sorted(known)}")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Llama-family decoder with one ``AttentionSpec`` per layer.

  Attributes:
    vocab_size, d_model, n_layers, n_heads, n_kv_heads, ffn_dim: the usual shapes
      (``n_kv_heads < n_heads`` is GQA: query head ``h`` uses KV head
      ``h // (n_heads // n_kv_heads)``).
    head_dim: per-head width; None means ``d_model // n_heads`` (then ``d_model`` must divide).
      An explicit value may differ from ``d_model // n_heads``; it must be even (RoPE).
    norm_eps: RMSNorm epsilon.
    max_seq_len: the training / static context length. RoPE tables (``dynamic_ntk``) are built
      for it, and it must be a multiple of every layer's ``block``.
    rope: ``RopeConfig``.
    tie_embeddings: use ``embed.T`` as the unembedding (no ``lm_head`` parameter).
    param_dtype / dtype: parameter storage and compute dtypes (``float32`` | ``bfloat16`` |
      ``float16``). Logits are always float32; RMSNorm statistics and RoPE are float32.
    remat: rematerialisation policy of every layer (see ``remat.REMAT_POLICIES``).
    remat_full / remat_sparse: per-kind overrides (None = use ``remat``), e.g. remat only the
      full-attention layers with ``remat="none", remat_full="full"``.
    scan_layers: scan repeated layers with ``nnx.scan`` (see ``scan_plan.plan_segments``).
    layers: tuple of ``AttentionSpec`` (strings / dicts are coerced), length ``n_layers``; an
      empty tuple means every layer is ``full``.
    attention_backend: passed to ``pallas_kernels.attention`` (``"auto"``, ``"reference"``, ...).
    initializer_range: std of the normal initialiser of every matrix (HF Llama: 0.02).
  """

  vocab_size: int = 32000
  d_model: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int = 32
  head_dim: int | None = None
  ffn_dim: int = 11008
  norm_eps: float = 1e-5
  max_seq_len: int = 4096
  rope: RopeConfig = RopeConfig()
  tie_embeddings: bool = False
  param_dtype: str = "float32"
  dtype: str = "bfloat16"
  remat: str = "none"
  remat_full: str | None = None
  remat_sparse: str | None = None
  scan_layers: bool = True
  layers: tuple[AttentionSpec, ...] = ()
  attention_backend: str = "auto"
  initializer_range: float = 0.02

  def __post_init__(self):
    if isinstance(self.rope, Mapping) or (hasattr(self.rope, "to_dict")
                                          and not isinstance(self.rope, RopeConfig)):
      object.__setattr__(self, "rope", RopeConfig.from_dict(self.rope))
    ints = all(isinstance(v, int) and v > 0 for v in (self.d_model, self.n_heads, self.n_layers))
    if self.head_dim is None and ints:
      if self.d_model % self.n_heads:
        raise ConfigError(
            f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; set head_dim "
            "explicitly")
      object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
    layers = tuple(self.layers) if self.layers else (AttentionSpec.full(),) * (
        self.n_layers if ints else 0)
    coerced = []
    for i, s in enumerate(layers):
      try:
        coerced.append(as_spec(s))
      except SpecError as e:
        raise ConfigError(f"layers[{i}]: {e}") from None
    object.__setattr__(self, "layers", tuple(coerced))
    self.validate()

  # ---------------------------------------------------------------- validation
  def validate(self) -> None:
    """Raises ``ConfigError`` (one line) on the first problem found."""
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                 "ffn_dim", "max_seq_len"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{name} must be a positive int, got {v!r}")
    if self.n_heads % self.n_kv_heads:
      raise ConfigError(
          f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
    if not self.norm_eps > 0:
      raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")
    if not self.initializer_range > 0:
      raise ConfigError(f"initializer_range must be > 0, got {self.initializer_range}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {DTYPES}")
    for name in ("remat", "remat_full", "remat_sparse"):
      v = getattr(self, name)
      if v is None and name != "remat":
        continue
      if v not in REMAT_POLICIES:
        raise ConfigError(f"{name} {v!r} is not one of {tuple(REMAT_POLICIES)}")
    if not isinstance(self.rope, RopeConfig):
      raise ConfigError(f"rope must be a RopeConfig or a dict, got {type(self.rope).__name__}")
    if len(self.layers) != self.n_layers:
      raise ConfigError(f"layers has {len(self.layers)} specs but n_layers is {self.n_layers}")
    for i, spec in enumerate(self.layers):
      if self.max_seq_len % spec.block:
        raise ConfigError(
            f"max_seq_len {self.max_seq_len} is not a multiple of layers[{i}] block {spec.block} "
            f"({spec}); every layer's block must divide max_seq_len")
    if not isinstance(self.attention_backend, str) or not self.attention_backend:
      raise ConfigError(f"attention_backend must be a non-empty string, got "
                        f"{self.attention_backend!r}")

  # ---------------------------------------------------------------- derived
  def remat_for(self, spec: AttentionSpec) -> str:
    """The remat policy name of a layer with this spec (per-kind override, else ``remat``)."""
    override = self.remat_full if spec.is_full else self.remat_sparse
    return self.remat if override is None else override

  def describe(self) -> str:
    return (f"Llama d={self.d_model} L={self.n_layers} H={self.n_heads}/{self.n_kv_heads} "
            f"Dh={self.head_dim} F={self.ffn_dim} V={self.vocab_size} T={self.max_seq_len} "
            f"layers: {layout_lib.describe_layout(self.layers)}")

  def replace(self, **changes: Any) -> "ModelConfig":
    """Copy with changes; accepts the layout keys of ``from_dict`` too.

    Without layout changes the current layout is kept in its compact form, so a ``longgen``
    layout is recomputed for a new ``n_layers`` while an explicit one must then be replaced.
    """
    d = self.to_dict()
    if any(k in changes for k in LAYOUT_KEYS + ("layers",)):
      for k in LAYOUT_KEYS + ("layers",):
        d.pop(k, None)
    d.update(changes)
    return ModelConfig.from_dict(d)

  # ---------------------------------------------------------------- (de)serialisation
  @classmethod
  def from_dict(cls, d: Any) -> "ModelConfig":
    """Builds a config from ``ModelConfig`` fields plus the §6 layout keys.

    Layout keys (at most one form): ``layout="longgen"`` + ``sparse`` [+ ``n_full``, ``full``];
    ``layout="full"`` [+ ``full``]; ``layout="explicit"`` + ``layers``; or ``full_layers=(i, ...)``
    + ``sparse`` [+ ``full``] (``layout="indices"`` may be given or omitted). With none of them,
    ``layers`` (or all-full) is used. ``rope`` may be a dict.
    """
    d = _to_plain_dict(d, "model config")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known - set(LAYOUT_KEYS))
    if unknown:
      raise ConfigError(f"unknown model config field(s) {unknown}")
    fields = {k: v for k, v in d.items() if k in known}
    lay = {k: d[k] for k in LAYOUT_KEYS if k in d}
    if "rope" in fields and not isinstance(fields["rope"], RopeConfig):
      fields["rope"] = RopeConfig.from_dict(fields["rope"])
    if "n_layers" not in fields:
      raise ConfigError("model config needs n_layers")
    fields["layers"] = layout_lib.resolve_layers(
        int(fields["n_layers"]), layers=fields.get("layers"), **lay)
    return cls(**fields)

  def to_dict(self) -> dict[str, Any]:
    """Plain-python dict (strings, numbers, tuples) that ``from_dict`` turns back into ``self``."""
    d: dict[str, Any] = {}
    for f in dataclasses.fields(self):
      if f.name in ("layers", "rope"):
        continue
      d[f.name] = getattr(self, f.name)
    d["rope"] = self.rope.to_dict()
    d.update(layout_lib.compact_layout(self.layers))
    return d
