"""Orbax checkpoints of a training run: layout, verified restore, fallback past corrupt steps.

Layout (one orbax ``CheckpointManager`` step per saved training step)::

  WORKDIR/checkpoints/<step>/
    params/      StandardSave of the parameters (an ``nnx.State`` of the model's ``nnx.Param``s)
    opt_state/   StandardSave of the optax state
    data/        grain iterator state, one JSON file per process (``process_<i>-of-<n>.json``,
                 written by grain's orbax handler)
    config/      the run's ml_collections config as JSON
    meta/        JSON: step, tokens seen, wall time, and the shape, dtype and checksum of every
                 array saved

Saves are asynchronous: ``save`` returns once the arrays are copied off the device, the files are
written in a background thread, and orbax writes them into a temporary directory that is renamed to
``<step>`` only when complete, so a process killed mid-save never leaves a half-written step
behind (the temporary directory is removed on the next start).

A checkpoint can still be damaged after it was committed (a truncated or garbled file). Orbax
notices truncation, but a garbled byte inside an array chunk restores silently as a wrong value.
Every save therefore records, per array, two exact 32-bit checksums of its raw bits (a plain and
an index-weighted wrap-around sum: integer arithmetic, so the result does not depend on the
reduction order or on how the array is sharded), and, per process, a SHA-256 of the data
iterator's position (its JSON state, canonically serialised), so an edited ``data/`` file is caught
like a garbled array. ``restore_latest`` verifies them and, if the
newest step fails to restore or to verify, says so, moves it to ``WORKDIR/checkpoints_corrupt/``
and tries the previous step. A step that is intact but saved for a different model, optimizer or
data pipeline (shapes in ``meta`` differ, or the iterator rejects its state) is NOT corruption:
restoring stops with ``CheckpointMismatchError`` and nothing is moved.

grain is imported by ``save`` only (its orbax handler writes ``data/``; restoring reads that JSON
directly), so reading a run's parameters (``longgen_jax.ckpt``) works without grain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

_log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No usable checkpoint could be restored (one clear line)."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint is intact but does not fit the current config (a different model, optimizer
  or data pipeline). Never treated as corruption: nothing is moved aside."""


# ----------------------------------------------------------------------------- checksums
def _leaf_checksum(x: jax.Array) -> jax.Array:
  """``[plain_sum, weighted_sum]`` (uint32, wrap-around) of the raw bits of ``x``."""
  x = jnp.asarray(x).reshape(-1)
  size = x.dtype.itemsize
  if size == 8:
    words = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  elif size == 4:
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif size == 2:
    words = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  elif size == 1:
    words = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  else:
    raise TypeError(f"cannot checksum dtype {x.dtype}")
  weights = jnp.arange(words.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                    jnp.sum(words * weights, dtype=jnp.uint32)])


@jax.jit
def _tree_checksums(tree: Any) -> list[jax.Array]:
  return [_leaf_checksum(x) for x in jax.tree.leaves(tree)]


def tree_checksums(tree: Any) -> dict[str, list[int]]:
  """``{key path: [sum, weighted sum]}`` for every array leaf of ``tree`` (exact, order-free)."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  sums = jax.device_get(_tree_checksums(tree))
  return {p: [int(a), int(b)] for p, (a, b) in zip(paths, sums)}


def tree_shapes(tree: Any) -> dict[str, list]:
  """``{key path: [shape, dtype]}`` of every array leaf (stored in ``meta`` at save time)."""
  return {jax.tree_util.keystr(p): [list(np.shape(x)), str(np.dtype(x.dtype))]
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_shapes(saved: dict[str, Any], tree: Any, item: str, where: str) -> None:
  want = tree_shapes(tree)
  if saved == want:
    return
  for path in sorted(set(saved) | set(want)):
    if saved.get(path) != want.get(path):
      raise CheckpointMismatchError(
          f"{where} does not fit the current config: {item}{path} is {saved.get(path)} there but "
          f"{want.get(path)} here (a different model or optimizer: use a new --workdir, or the "
          "run's own config)")


def _compare_checksums(saved: dict[str, Any], tree: Any, item: str) -> None:
  now = tree_checksums(tree)
  if set(now) != set(saved):
    raise CheckpointError(f"{item}: array set differs from the checksummed one")
  for path, value in now.items():
    if list(saved[path]) != value:
      raise CheckpointError(f"{item}{path}: checksum mismatch (the stored bytes were altered)")


def data_state_digest(state: Any) -> str:
  """SHA-256 of an iterator state (a JSON-able object, or grain's JSON bytes), key order free."""
  if isinstance(state, (bytes, bytearray)):
    state = json.loads(bytes(state).decode())
  text = json.dumps(state, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def _data_file(step_dir: str, index: int, count: int) -> str:
  return os.path.join(step_dir, "data", f"process_{index}-of-{count}.json")


def _gather_digests(digest: str) -> dict[str, str]:
  """``{data file name: digest}`` of every process (an all-gather when there are several)."""
  count = jax.process_count()
  if count == 1:
    return {os.path.basename(_data_file("", 0, 1)): digest}
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  mine = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(count, -1)
  return {os.path.basename(_data_file("", i, count)): bytes(every[i].tolist()).hex()
          for i in range(count)}


def failure_reason(e: BaseException, limit: int = 300) -> str:
  """One line saying why ``e`` happened: the innermost cause of the chain that says something.

  Orbax wraps TensorStore errors in a message ending "See full TensorStore details: <bound
  method ...>"; the chained cause holds the real reason, so that part is dropped.
  """
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  for err in reversed(chain):
    text = str(err).split("See full TensorStore details", 1)[0].strip()
    text = " ".join(text.split())
    if text and "<bound method" not in text:
      return f"{type(err).__name__}: {text}"[:limit]
  return type(chain[0]).__name__


# ----------------------------------------------------------------------------- manager
class Checkpointer:
  """The trainer's checkpoints in ``directory`` (``WORKDIR/checkpoints``).

  Args:
    directory: where the step directories live.
    keep: how many most recent steps to keep (older ones are deleted after a save).
    async_save: write in a background thread (``save`` only blocks for the device-to-host copy).
    read_only: open someone else's checkpoints (``init_from``): never create, clean up or delete.
  """

  def __init__(self, directory: str, *, keep: int = 1, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self.error_log = None   # set by the trainer: where orbax's own error records go
    self._last_started = None
    self._confirmed = None
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
            read_only=read_only, enable_async_checkpointing=async_save))

  # -------------------------------------------------------------------------- save
  def save(self, step: int, state: dict[str, Any], data_iter: Any, config_json: str,
           meta: dict[str, Any]) -> None:
    """Starts saving ``state`` (``params`` and ``opt_state``) and ``data_iter`` as ``step``.

    The iterator's position is read now (synchronously), so the caller may advance it as soon
    as this returns. Use :meth:`wait` to block until the files are committed. A failure (now,
    or of the previous asynchronous save) raises ``save_errors.CheckpointSaveError`` (one line).
    """
    self.check()
    self._last_started = int(step)
    try:
      self._save(step, state, data_iter, config_json, meta)
    except Exception as e:  # noqa: BLE001 -- any failure to write stops the run, in one line
      raise self._save_error(step, e) from e

  def _save(self, step, state, data_iter, config_json, meta) -> None:
    # grain's orbax handler for data/ (registered on import); restoring does not need it.
    import grain.checkpoint  # pylint: disable=import-outside-toplevel
    items = ("params", "opt_state")
    meta = dict(meta, step=int(step), saved_at=time.time(),
                shapes={k: tree_shapes(state[k]) for k in items},
                checksums={k: tree_checksums(state[k]) for k in items},
                data_digests=_gather_digests(data_state_digest(data_iter.get_state())))
    self.manager.save(int(step), args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        opt_state=ocp.args.StandardSave(state["opt_state"]),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(json.loads(config_json)),
        meta=ocp.args.JsonSave(meta)), force=True)

  def _save_error(self, step: int | None, error: BaseException):
    from longgen_jax.training import save_errors  # pylint: disable=import-outside-toplevel
    try:
      self.manager.reload()
    except Exception:  # noqa: BLE001 -- only for naming the last good step
      pass
    failed = step if step is not None else self._last_started
    good = [s for s in self.all_steps() if failed is None or s < failed]
    return save_errors.save_failed(failed, error, max(good, default=None), self.error_log)

  def check(self) -> None:
    """Raises ``CheckpointSaveError`` if a finished asynchronous save failed (cheap; per step).

    Orbax's own finalize thread consumes (and only logs) a background write error, so a save
    counts as failed when it is no longer in progress and its step directory was not committed.
    """
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(None, e) from e
    step = self._last_started
    # The primary process commits (renames) the step directory; the others only finalize.
    if (step is None or step == self._confirmed or jax.process_index() != 0
        or self.manager.is_saving_in_progress()):
      return
    if os.path.isdir(os.path.join(self.directory, str(step))):
      self._confirmed = step
      return
    from longgen_jax.training import save_errors  # pylint: disable=import-outside-toplevel
    error = save_errors.last_orbax_error() or RuntimeError(
        f"{self.directory}/{step} was not committed")
    raise self._save_error(step, error)

  def wait(self) -> None:
    """Blocks until every started save is committed; a background write error -> one line."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(None, e) from e
    self.check()

  def close(self, quiet: bool = False) -> None:
    """Waits for the last save (its failure is raised, in one line, unless ``quiet``: when
    another error is already being reported) and closes the manager."""
    try:
      self.wait()
    except CheckpointError:
      if not quiet:
        raise
    finally:
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001 -- a failed save was reported by wait()
        pass

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  # -------------------------------------------------------------------------- restore
  def restore(self, step: int, abstract_state: dict[str, Any], data_iter: Any = None,
              *, params_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores one step into the shapes/dtypes/shardings of ``abstract_state`` and verifies it.

    Returns ``(state, meta)``; ``state`` has ``params`` and, unless ``params_only``,
    ``opt_state``. ``data_iter``, when given, is moved to the saved position. Raises
    ``CheckpointMismatchError`` when the step is intact but saved for another model, optimizer
    or data pipeline, and any other exception when it is unreadable or altered.
    """
    where = f"checkpoint {self.directory}/{step}"
    meta = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    items = ("params",) if params_only else ("params", "opt_state")
    for item in items:
      _check_shapes(meta["shapes"][item], abstract_state[item], item, where)
    restored = self.manager.restore(int(step), args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(abstract_state[item]) for item in items}))
    state = {item: restored[item] for item in items}
    for item in items:
      _compare_checksums(meta["checksums"][item], state[item], item)
    if data_iter is not None:   # last: only a verified step moves the iterator
      self._restore_data(step, data_iter, where, meta.get("data_digests"))
    return state, meta

  def _restore_data(self, step: int, data_iter: Any, where: str,
                    digests: dict[str, str] | None) -> None:
    """Reads this process's iterator state (grain's file layout), verifies it, applies it.

    Unreadable JSON or a state whose digest differs from the one in ``meta`` is corruption
    (checkpoints saved before digests were recorded have none to check); a state the iterator
    rejects is a mismatch (the data config changed), reported without touching the checkpoint.
    """
    path = _data_file(os.path.join(self.directory, str(step)), jax.process_index(),
                      jax.process_count())
    with open(path, encoding="utf-8") as f:
      state = json.load(f)
    if digests is not None and digests.get(os.path.basename(path)) != data_state_digest(state):
      raise CheckpointError(f"data/{os.path.basename(path)}: checksum mismatch (the stored data "
                            "position was altered)")
    try:
      data_iter.set_state(state)
      if hasattr(data_iter, "start_prefetch"):
        data_iter.start_prefetch()   # what grain's handler does after a restore
    except Exception as e:  # noqa: BLE001 -- grain raises various types for a foreign state
      raise CheckpointMismatchError(
          f"{where}: the data iterator state does not fit the current data config "
          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

  def restore_latest(self, abstract_state: dict[str, Any], data_iter: Any = None,
                     ) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """Restores the newest step that reads back intact; None if there is no checkpoint at all.

    A step that fails is reported (warning naming the step and the reason), moved to
    ``<workdir>/checkpoints_corrupt/`` so that the run can later save that step number again,
    and the previous step is tried. Raises ``CheckpointError`` if checkpoints exist but none
    is usable.
    """
    steps = self.all_steps()
    failures = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, abstract_state, data_iter)
      except CheckpointMismatchError:
        raise   # the config changed, not the checkpoint: leave everything in place
      except Exception as e:  # noqa: BLE001 -- any other failure means "this step is unusable"
        reason = failure_reason(e)
        _log.warning("checkpoint step %d in %s is unusable (%s); trying the previous one",
                     step, self.directory, reason)
        failures.append(f"step {step}: {reason}")
        self._quarantine(step)
        continue
      if failures:
        _log.warning("resuming from step %d after skipping %d unusable checkpoint(s)", step,
                     len(failures))
      return step, state, meta
    if failures:
      raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(failures))
    return None

  def _quarantine(self, step: int) -> None:
    """Moves a bad step out of the manager's directory (primary process only)."""
    src = os.path.join(self.directory, str(step))
    if not self.read_only and jax.process_index() == 0 and os.path.isdir(src):
      dst_dir = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt")
      os.makedirs(dst_dir, exist_ok=True)
      dst = os.path.join(dst_dir, f"{step}-{int(time.time())}")
      shutil.move(src, dst)
      _log.warning("moved unusable checkpoint %s to %s", src, dst)
    self.manager.reload()


def abstract_like(tree: Any, shardings: Any = None) -> Any:
  """``ShapeDtypeStruct``s of ``tree`` with ``shardings`` (default: the first local device)."""
  if shardings is None:
    shardings = jax.tree.map(
        lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)
