"""Background prefetch of training batches, with an exact, checkpointable position.

The trainer's host work per step (reading, packing and transferring a batch) runs in one
background thread, ``depth`` batches ahead of the step that consumes them, so the accelerator no
longer waits for it. The wrapped iterator is consumed in order by that single thread, so the
batches are exactly those of the plain iterator; what changes is only *when* they are made.

Position: after each ``next`` of the inner iterator the thread records the inner iterator's
state. :meth:`frozen` returns the state after the last batch the *trainer* consumed (not the last
one the thread made), as an object grain's checkpoint handler accepts, so a checkpoint resumes at
the right batch however far ahead the thread has read.

  it = Prefetcher(data_iter, depth=2, transfer=lambda b: device_batch(b, shardings))
  host_batch, batch = next(it)
  ckpt.save(step, state, it.frozen(), ...)
  it.close()
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any, Callable

_END = object()


class FrozenState:
  """A saved iterator position in the form grain's checkpoint handler writes (bytes of JSON)."""

  def __init__(self, state: Any):
    self._bytes = json.dumps(state, indent=4).encode()

  def get_state(self) -> bytes:
    return self._bytes


class Prefetcher:
  """Iterates ``(host_batch, transfer(host_batch))`` made ``depth`` steps ahead in a thread.

  ``depth=0`` does everything in the caller's thread (no thread; the same interface). An
  exception in the thread is raised by the ``next`` call that would have returned that batch.
  ``wait_seconds`` accumulates the time ``next`` spent blocked (the input pipeline's share of a
  step that the accelerator could not hide).
  """

  def __init__(self, inner: Any, *, depth: int = 2, transfer: Callable[[Any], Any] | None = None):
    if depth < 0:
      raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    self._inner = inner
    self._transfer = transfer or (lambda b: b)
    self._consumed = inner.get_state()
    self.depth = depth
    self.wait_seconds = 0.0
    self._stop = threading.Event()
    self._queue: queue.Queue | None = None
    self._thread = None
    if depth > 0:
      self._queue = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._run, name="batch-prefetch", daemon=True)
      self._thread.start()

  def _make(self):
    host = next(self._inner)
    return host, self._transfer(host), self._inner.get_state()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        item = self._make()
      except StopIteration:
        self._put(_END)
        return
      except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there
        self._put(e)
        return
      if not self._put(item):
        return

  def __iter__(self):
    return self

  def __next__(self):
    t0 = time.perf_counter()
    if self._queue is None:
      item = self._make()
    else:
      item = self._queue.get()
      if item is _END:
        self._queue.put(_END)
        raise StopIteration
      if isinstance(item, BaseException):
        raise item
    self.wait_seconds += time.perf_counter() - t0
    host, batch, self._consumed = item
    return host, batch

  def frozen(self) -> FrozenState:
    """The position after the last consumed batch, detached from this object (safe to write
    later, e.g. by an asynchronous checkpoint save)."""
    return FrozenState(self._consumed)

  def close(self) -> None:
    """Stops the thread (it may be blocked in the inner iterator; it is a daemon)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5.0)
