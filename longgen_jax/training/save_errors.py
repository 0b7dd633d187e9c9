"""A checkpoint save that fails (disk full, permissions, ...) stops the run with one line.

Orbax reports a failed write several times over (an ERROR log record with a traceback per item
and per thread, then the exception itself, then "coroutine was never awaited" warnings): on a full
disk that was well over a thousand stderr lines. :func:`divert_orbax_errors` sends orbax's ERROR
records to ``WORKDIR/checkpoint_errors.log`` instead of the console (nothing is lost: the file has
every traceback), and :func:`save_failed` turns the exception into a ``CheckpointSaveError`` whose
one line names the step, the reason, the last good checkpoint and that file.
"""

from __future__ import annotations

import logging
import os
import warnings

from longgen_jax.training.checkpoint import CheckpointError, failure_reason

LOG_NAME = "checkpoint_errors.log"


class CheckpointSaveError(CheckpointError):
  """Saving a checkpoint failed; the run stops, earlier checkpoints are untouched."""


class _OrbaxErrors(logging.Filter):
  """Drops orbax ERROR records from the console handler (they go to the log file instead)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


_FILTER = _OrbaxErrors()
_LAST_ERROR: list[BaseException] = []


class _ErrorLog(logging.FileHandler):
  """The log file; also remembers the newest exception orbax logged (for the one-line reason)."""

  def emit(self, record: logging.LogRecord) -> None:
    if record.exc_info and record.exc_info[1] is not None:
      _LAST_ERROR[:] = [record.exc_info[1]]
    super().emit(record)


def last_orbax_error() -> BaseException | None:
  """The newest exception orbax logged at ERROR (its background save errors are only logged)."""
  return _LAST_ERROR[0] if _LAST_ERROR else None


def divert_orbax_errors(workdir: str) -> str:
  """Routes orbax's ERROR records to ``WORKDIR/checkpoint_errors.log``; returns its path."""
  path = os.path.join(workdir, LOG_NAME)
  absl_logger = logging.getLogger("absl")
  for handler in absl_logger.handlers + logging.getLogger().handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
  if not any(getattr(h, "_longgen_path", None) == path for h in absl_logger.handlers):
    file_handler = _ErrorLog(path, delay=True, encoding="utf-8")
    file_handler.setLevel(logging.ERROR)
    file_handler.addFilter(lambda r: "orbax" in r.pathname)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(pathname)s:%(lineno)d %(message)s"))
    file_handler._longgen_path = path   # pylint: disable=protected-access
    absl_logger.addHandler(file_handler)
  return path


def save_failed(step: int | None, error: BaseException, last_good: int | None,
                log_path: str | None) -> CheckpointSaveError:
  """The one-line error for a failed save of ``step`` (None: an earlier asynchronous one)."""
  # The aborted save leaves un-awaited coroutines behind; their warnings say nothing new.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
  which = f"checkpoint step {step}" if step is not None else "a checkpoint"
  kept = (f"last good checkpoint: step {last_good}" if last_good is not None
          else "no checkpoint was saved before")
  where = f"; details in {log_path}" if log_path and os.path.isfile(log_path) else ""
  return CheckpointSaveError(f"saving {which} failed ({failure_reason(error, 200)}); the run "
                             f"stopped; {kept} (run the same command to continue from it once "
                             f"the cause is fixed){where}")
