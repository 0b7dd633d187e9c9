"""What a checkpoint path is: the one classifier of trainer runs, imported checkpoints and HF dirs.

* ``"converted"``: a directory with ``longgen_checkpoint.json`` (``hf.import_hf``'s output);
* ``"trainer"``: a run of ``longgen_jax.train``: ``WORKDIR``, ``WORKDIR/checkpoints`` (its newest
  step) or ``WORKDIR/checkpoints/<step>``;
* ``"hf"``: a Hugging Face model directory (``config.json``).

A missing path or a directory that is none of these raises ``CheckpointReadError`` (one line,
naming the caller's option: ``init_from``, ``--checkpoint``, ...). Only the file system is read.
"""

from __future__ import annotations

import os

from longgen_jax.hf.checkpoint import META_FILE

TRAINER, CONVERTED, HF = "trainer", "converted", "hf"
HF_CONFIG = "config.json"
_DESCRIBE = {
    TRAINER: "a trainer run (WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/<step>)",
    CONVERTED: f"an imported checkpoint ({META_FILE})",
    HF: f"a Hugging Face model directory ({HF_CONFIG})",
}


class CheckpointReadError(ValueError):
  """A checkpoint path that cannot be read: missing, of no known kind, or unrestorable (one line).

  Callers turn it into their own error type (``ConfigError``, ``InferError``,
  ``HFConversionError``)."""


def _expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(str(path)))


def _find_step(path: str) -> tuple[str, int] | None:
  """``(checkpoints dir, newest step)`` of a trainer path, else None."""
  for candidate in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(candidate):
      steps = sorted(int(n) for n in os.listdir(candidate) if n.isdigit()
                     and os.path.isdir(os.path.join(candidate, n)))
      if steps:
        return candidate, steps[-1]
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(base)
  return None


def _unrecognised(path: str, what: str) -> CheckpointReadError:
  return CheckpointReadError(
      f"{what}={path!r} holds no orbax checkpoint step (WORKDIR, WORKDIR/checkpoints or "
      f"WORKDIR/checkpoints/<step>) and is neither an HF model directory ({HF_CONFIG}) nor an "
      f"imported checkpoint ({META_FILE})")


def kind_of(path: str, what: str = "checkpoint") -> str:
  """``TRAINER``, ``CONVERTED`` or ``HF`` (see the module docstring); ``what`` names the option
  in the error message."""
  full = _expand(path)
  if not os.path.exists(full):
    raise CheckpointReadError(f"{what}={path!r} does not exist")
  if os.path.isfile(os.path.join(full, META_FILE)):
    return CONVERTED
  if _find_step(full) is not None:
    return TRAINER
  if os.path.isfile(os.path.join(full, HF_CONFIG)):
    return HF
  raise _unrecognised(path, what)


def require_kind(path: str, allowed: tuple[str, ...], what: str = "checkpoint") -> str:
  """``kind_of(path)``, which must be one of ``allowed`` (else one line naming both)."""
  kind = kind_of(path, what)
  if kind not in allowed:
    raise CheckpointReadError(f"{what}={path!r} is {_DESCRIBE[kind]}; expected "
                              + " or ".join(_DESCRIBE[k] for k in allowed))
  return kind


def trainer_step(path: str, what: str = "checkpoint") -> tuple[str, int]:
  """``(WORKDIR/checkpoints, step)``: the newest step of a trainer path (or the step named)."""
  found = _find_step(_expand(path))
  if found is None:
    if not os.path.exists(_expand(path)):
      raise CheckpointReadError(f"{what}={path!r} does not exist")
    raise _unrecognised(path, what)
  return found
