"""One trainer per workdir: an exclusive ``flock`` on ``WORKDIR/trainer.lock``.

The lock file holds the holder's pid, host and start time, so a second trainer started on the same
workdir stops with one line naming the holder instead of interleaving ``metrics.jsonl`` and racing
on checkpoints. The lock goes with the process (the kernel drops it when the file descriptor
closes, also on SIGKILL), so a crashed run never leaves a stale lock behind. Only the primary
process of a multi-process job takes it. ``flock`` is advisory and per host: it guards against a
second run on the same machine (and on file systems that forward it, such as most NFS v4 setups).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket

from longgen_jax.model.errors import ConfigError

LOCK_NAME = "trainer.lock"


class WorkdirLock:
  """Holds the workdir's lock until :meth:`release` (or process exit)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ConfigError(f"workdir {workdir} is not writable ({e.strerror}: {self.path})") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
      os.close(fd)
      raise ConfigError(f"workdir {workdir} is in use by another trainer ({holder}); wait for it "
                        "to finish or use another --workdir") from None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n"
              .encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)   # closing drops the flock
      self._fd = None


def prepare_workdir(workdir: str) -> None:
  """Creates ``workdir``; an unwritable location is one ``ConfigError`` line."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"cannot create workdir {workdir} ({e.strerror})") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir} is not writable (permission denied)")
