"""The one public attention entry point and its backend registry / dispatch.

  attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, backend="auto",
            q_offset=0, kv_offset=0, scale=None, return_lse=False)

q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D], Hq % Hkv == 0; positions are q_offset + arange(Tq) and
kv_offset + arange(Tk) (static ints) so sequence-parallel chunks and chunked prefill reuse the
same kernels. Returns out [B, Tq, Hq, D] in q.dtype, plus lse [B, Hq, Tq] fp32 (natural log,
-inf for rows that see nothing) when return_lse. Differentiable in q, k, v (lse too).

Backends are registered with ``register_backend`` (the built-in ones, and one line per GPU
backend, live in ``pallas_kernels/backends/registry.py``). ``backend="auto"`` picks, among the backends
registered with ``auto=True``, the highest-priority one whose ``supports`` accepts the call
(``xla`` accepts everything and has the lowest priority), and logs its choice once per
(platform, pattern kind, backend).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.backends import _frame
from pallas_kernels.spec import AttentionSpec, as_spec

_log = logging.getLogger(__name__)


class AttentionShapes(NamedTuple):
  """Static facts about one call, given to ``supports`` callables."""
  batch: int
  q_len: int
  kv_len: int
  q_heads: int
  kv_heads: int
  head_dim: int
  q_offset: int
  kv_offset: int
  has_segment_ids: bool


SupportsFn = Callable[[str, AttentionSpec, AttentionShapes, Any], "str | None"]


@dataclasses.dataclass
class Backend:
  """A registered backend. ``fn`` / ``supports`` may be ``"module:attr"`` strings (lazy import)."""
  name: str
  fn: Any
  supports: Any = None
  priority: int = 0
  auto: bool = True
  platforms: tuple[str, ...] | None = None

  def resolve(self, attr: str):
    val = getattr(self, attr)
    if isinstance(val, str):
      module, _, name = val.partition(":")
      val = getattr(importlib.import_module(module), name)
      setattr(self, attr, val)
    return val

  def reason_unsupported(self, platform, spec, shapes, dtype) -> str | None:
    """None when the backend can run this call, else a one-line reason."""
    if self.platforms is not None and platform not in self.platforms:
      return f"runs on {'/'.join(self.platforms)} only (platform is {platform})"
    try:
      supports = self.resolve("supports")
      self.resolve("fn")
    except (ImportError, AttributeError) as e:
      return f"cannot import backend {self.name!r}: {e}"
    return None if supports is None else supports(platform, spec, shapes, dtype)


_BACKENDS: dict[str, Backend] = {}
_LOGGED: set = set()
_LOCK = threading.Lock()
_BUILTINS_LOADED = False


def register_backend(name: str, fn, supports=None, *, priority: int = 0, auto: bool = True,
                     platforms: tuple[str, ...] | None = None, replace: bool = False) -> None:
  """Registers an attention backend.

  Args:
    name: backend name (``backend=name`` selects it).
    fn: ``fn(q, k, v, spec, *, segment_ids, kv_segment_ids, q_offset, kv_offset, scale,
      return_lse)`` with the ``attention`` contract (inputs already validated; ``kv_segment_ids``
      already defaulted), or a ``"module:attr"`` string imported on first use.
    supports: ``supports(platform, spec, shapes: AttentionShapes, dtype) -> None | reason`` (or a
      ``"module:attr"`` string); None means "runs everywhere".
    priority: ``auto`` tries higher priorities first.
    auto: whether ``backend="auto"`` may pick it.
    platforms: e.g. ``("gpu",)``: other platforms are refused before anything is imported.
    replace: allow re-registering an existing name.
  """
  if not isinstance(name, str) or not name or name == "auto":
    raise ValueError(f"invalid backend name {name!r}")
  _ensure_builtins()      # a plugin replacing a built-in must come after it
  with _LOCK:
    if name in _BACKENDS and not replace:
      raise ValueError(f"attention backend {name!r} is already registered")
    _BACKENDS[name] = Backend(name, fn, supports, int(priority), bool(auto),
                              None if platforms is None else tuple(platforms))


def unregister_backend(name: str) -> None:
  """Removes a registered backend (tests, plugins replacing a built-in; e.g. ``"fa4"`` to keep
  ``auto`` on our kernels where FlashAttention-4 is installed)."""
  _ensure_builtins()      # else a built-in removed before first use would come back with them
  with _LOCK:
    if _BACKENDS.pop(name, None) is None:
      raise ValueError(f"attention backend {name!r} is not registered")


@contextlib.contextmanager
def backends_removed(*names: str):
  """``with backends_removed("pallas_gpu_mosaic"):`` runs the block with those backends out of the
  registry (``auto`` as it chose without them: A/B runs of a new row, ``benchmarks/serving.py
  --without``) and puts them back after, as they were. An unknown name raises ValueError first."""
  for name in names:
    problem = unknown_backend(name, allow_auto=False)
    if problem:
      raise ValueError(problem)
  with _LOCK:
    removed = {name: _BACKENDS.pop(name) for name in dict.fromkeys(names)}
  try:
    yield
  finally:
    with _LOCK:
      _BACKENDS.update(removed)


def _ensure_builtins() -> None:
  global _BUILTINS_LOADED
  if not _BUILTINS_LOADED:
    _BUILTINS_LOADED = True
    from pallas_kernels.backends.registry import BACKENDS  # pylint: disable=g-import-not-at-top
    for row in BACKENDS:
      register_backend(**row)


def available_backends() -> list[str]:
  _ensure_builtins()
  return sorted(_BACKENDS)


def unknown_backend(name: str, allow_auto: bool = True) -> str | None:
  """None if ``name`` is a registered backend (or ``auto``, if allowed), else the one-line
  complaint. Every front end (``attention``, the trainer's config check, the benchmarks' flags)
  words a bad backend name with this."""
  _ensure_builtins()
  if name in _BACKENDS or (allow_auto and name == "auto"):
    return None
  choices = (["auto"] if allow_auto else []) + available_backends()
  return f"unknown attention backend {name!r}; choose one of {', '.join(choices)}"


def parse_without(text: str, backend: str) -> tuple[tuple[str, ...], str | None]:
  """A benchmark's ``--without`` flag (comma-separated backends taken out of the registry for
  the run, ``backends_removed``): (the names, the one-line complaint or None). It complains of
  an unknown name, or of taking out the ``--backend`` the run asked for."""
  names = tuple(filter(None, text.split(",")))
  for name in names:
    problem = unknown_backend(name, allow_auto=False)
    if problem:
      return names, f"--without: {problem}"
  if backend in names:
    return names, f"--without takes out {backend!r}, the --backend asked for"
  return names, None


def get_backend_fn(name: str):
  """The (imported) ``fn`` of the registered backend ``name``."""
  problem = unknown_backend(name, allow_auto=False)
  if problem:
    raise ValueError(problem)
  return _BACKENDS[name].resolve("fn")


def current_platform() -> str:
  """``cpu``, ``gpu`` or ``tpu`` (``cuda``/``rocm`` map to ``gpu``)."""
  p = jax.default_backend()
  return "gpu" if p in ("cuda", "rocm", "gpu") else p


def select_backend(spec, shapes: AttentionShapes, dtype, platform: str | None = None,
                   backend: str = "auto") -> str:
  """Name of the backend that ``attention`` would run (raises ValueError if none can)."""
  _ensure_builtins()
  spec = as_spec(spec)
  platform = current_platform() if platform is None else platform
  if backend != "auto":
    problem = unknown_backend(backend)
    if problem:
      raise ValueError(problem)
    b = _BACKENDS[backend]
    reason = b.reason_unsupported(platform, spec, shapes, dtype)
    if reason:
      raise ValueError(
          f"attention backend {backend!r} cannot run this call on {platform}: {reason}")
    return backend
  reasons = []
  for b in sorted(_BACKENDS.values(), key=lambda b: (-b.priority, b.name)):
    if not b.auto:
      continue
    reason = b.reason_unsupported(platform, spec, shapes, dtype)
    if reason is None:
      key = (platform, spec.kind, b.name)
      if key not in _LOGGED:
        _LOGGED.add(key)
        _log.info("attention: backend %r for %s layers on %s", b.name, spec.kind, platform)
      return b.name
    reasons.append(f"{b.name}: {reason}")
  raise ValueError(f"no attention backend supports this call on {platform}: {'; '.join(reasons)}")


def attention(q, k, v, spec, *, segment_ids=None, kv_segment_ids=None, backend: str = "auto",
              q_offset: int = 0, kv_offset: int = 0, scale: float | None = None,
              return_lse: bool = False):
  """Block-sparse causal attention (docs/architecture.md section 2); see the module docstring."""
  spec = as_spec(spec)
  if not isinstance(backend, str):
    raise ValueError(f"backend must be a string, got {type(backend).__name__}")
  kv_segment_ids = _frame.check_inputs(q, k, v, segment_ids, kv_segment_ids, q_offset, kv_offset,
                                       scale)
  shapes = AttentionShapes(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3],
                           int(q_offset), int(kv_offset), segment_ids is not None)
  name = select_backend(spec, shapes, jnp.dtype(q.dtype), backend=backend)
  fn = get_backend_fn(name)
  return fn(q, k, v, spec, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
            q_offset=q_offset, kv_offset=kv_offset, scale=scale, return_lse=return_lse)
