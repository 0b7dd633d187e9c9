"""Layer layouts: which ``AttentionSpec`` each layer uses.

LongGen (arXiv 2410.01485) keeps full attention in ONE contiguous block of about a third of the
layers, in the middle of the stack, and gives the bottom and top layers a static sparse pattern.

Centering rule: with ``n_full`` full layers and ``n_sparse = n_layers - n_full`` sparse ones, the
bottom gets ``n_sparse // 2`` sparse layers and the top gets the rest, so on an odd split the top
has one layer more (32 layers: 10 sparse, 11 full at layers 10..20, 11 sparse).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from pallas_kernels.spec import FULL, AttentionSpec, SpecError, as_spec

from longgen_jax.model.errors import ConfigError

LAYOUTS = ("longgen", "full", "explicit", "indices")


def _spec(x: Any, what: str) -> AttentionSpec:
  try:
    return as_spec(x)
  except SpecError as e:
    raise ConfigError(f"{what}: {e}") from None


def default_n_full(n_layers: int) -> int:
  """``round(n_layers / 3)`` (n/3 is never exactly x.5, so rounding is unambiguous)."""
  return int(round(n_layers / 3))


def longgen_layout(n_layers: int, sparse: Any, full: Any = FULL,
                   n_full: int | None = None) -> tuple[AttentionSpec, ...]:
  """``n_full`` (default ``round(n/3)``) full layers as one centred block; the rest ``sparse``."""
  sparse_spec = _spec(sparse, "sparse")
  full_spec = _spec(full, "full")
  if n_layers <= 0:
    raise ConfigError(f"n_layers must be > 0, got {n_layers}")
  n_full = default_n_full(n_layers) if n_full is None else int(n_full)
  if not 0 <= n_full <= n_layers:
    raise ConfigError(f"n_full {n_full} is outside [0, n_layers={n_layers}]")
  bottom = (n_layers - n_full) // 2
  return tuple(full_spec if bottom <= i < bottom + n_full else sparse_spec
               for i in range(n_layers))


def layers_from_indices(n_layers: int, full_layers: Iterable[int], sparse: Any,
                        full: Any = FULL) -> tuple[AttentionSpec, ...]:
  """Full attention at the given layer indices, ``sparse`` everywhere else."""
  sparse_spec = _spec(sparse, "sparse")
  full_spec = _spec(full, "full")
  idx = [int(i) for i in full_layers]
  for i in idx:
    if not 0 <= i < n_layers:
      raise ConfigError(f"full_layers index {i} is out of range for n_layers={n_layers}")
  if len(set(idx)) != len(idx):
    raise ConfigError(f"full_layers has duplicate indices: {sorted(idx)}")
  chosen = set(idx)
  return tuple(full_spec if i in chosen else sparse_spec for i in range(n_layers))


def resolve_layers(n_layers: int, *, layout: str | None = None, sparse: Any = None,
                   full: Any = FULL, n_full: int | None = None, full_layers: Any = None,
                   layers: Any = None) -> tuple[AttentionSpec, ...]:
  """Turns the §6 config forms into a tuple of specs.

  * ``layout="longgen"`` + ``sparse`` [+ ``n_full``, ``full``]
  * ``layout="full"`` [+ ``full``]
  * ``layout="explicit"`` + ``layers`` (specs, strings or dicts)
  * ``full_layers=(i, ...)`` + ``sparse`` [+ ``full``] (``layout`` omitted or ``"indices"``)
  * nothing: ``layers`` if given, else every layer ``full``.
  """
  if layout is None:
    if full_layers is not None:
      layout = "indices"
    elif layers is not None and len(layers):
      layout = "explicit"
    else:
      layout = "full"
  if layout not in LAYOUTS:
    raise ConfigError(f"layout {layout!r} is not one of {LAYOUTS}")
  if full_layers is not None and layout != "indices":
    raise ConfigError(f"full_layers is only valid without layout or with layout='indices', "
                      f"got layout={layout!r}")
  if layers is not None and len(layers) and layout != "explicit":
    raise ConfigError(f"layers is only valid with layout='explicit', got layout={layout!r}")
  if layout in ("longgen", "indices") and sparse is None:
    raise ConfigError(f"layout {layout!r} needs a sparse spec, e.g. sparse='sink_window:64:4096'")
  if layout not in ("longgen", "indices") and sparse is not None:
    raise ConfigError(f"sparse is not used by layout {layout!r}")
  if n_full is not None and layout != "longgen":
    raise ConfigError(f"n_full is only valid with layout='longgen', got layout={layout!r}")
  if layout == "longgen":
    return longgen_layout(n_layers, sparse, full, n_full)
  if layout == "indices":
    if full_layers is None:
      raise ConfigError("layout 'indices' needs full_layers=(i, j, ...)")
    return layers_from_indices(n_layers, full_layers, sparse, full)
  if layout == "full":
    return (_spec(full, "full"),) * n_layers
  if layers is None or not len(layers):
    raise ConfigError("layout 'explicit' needs layers=(...)")
  return tuple(_spec(s, f"layers[{i}]") for i, s in enumerate(layers))


def compact_layout(layers: Sequence[AttentionSpec]) -> dict[str, Any]:
  """The shortest ``resolve_layers`` keywords that give back exactly ``layers``."""
  n = len(layers)
  kinds = set(layers)
  if len(kinds) == 1 and layers[0].is_full:
    return {"layout": "full", "full": str(layers[0])}
  fulls = {s for s in layers if s.is_full}
  sparses = {s for s in layers if not s.is_full}
  if len(fulls) <= 1 and len(sparses) == 1:
    sparse = next(iter(sparses))
    full = next(iter(fulls)) if fulls else FULL
    n_full = sum(s.is_full for s in layers)
    for nf in (None, n_full):
      if tuple(longgen_layout(n, sparse, full, nf)) == tuple(layers):
        d = {"layout": "longgen", "sparse": str(sparse), "full": str(full)}
        if nf is not None:
          d["n_full"] = nf
        return d
    return {"layout": "indices", "sparse": str(sparse), "full": str(full),
            "full_layers": tuple(i for i, s in enumerate(layers) if s.is_full)}
  return {"layout": "explicit", "layers": tuple(str(s) for s in layers)}


def _short(spec: AttentionSpec) -> str:
  return "F" if spec.is_full else "S"


def describe_layout(layers: Sequence[AttentionSpec]) -> str:
  """Run-length summary, e.g. ``"S×10 F×11 S×11"``; distinct sparse specs are numbered (S1, S2)."""
  sparse_ids: dict[AttentionSpec, int] = {}
  for s in layers:
    if not s.is_full and s not in sparse_ids:
      sparse_ids[s] = len(sparse_ids) + 1
  full_ids: dict[AttentionSpec, int] = {}
  for s in layers:
    if s.is_full and s not in full_ids:
      full_ids[s] = len(full_ids) + 1

  def name(s: AttentionSpec) -> str:
    ids = full_ids if s.is_full else sparse_ids
    return _short(s) + (str(ids[s]) if len(ids) > 1 else "")

  runs: list[list[Any]] = []
  for s in layers:
    if runs and runs[-1][0] == s:
      runs[-1][1] += 1
    else:
      runs.append([s, 1])
  return " ".join(f"{name(s)}×{c}" for s, c in runs)
