"""Saving and restoring the data iterator's position (grain + orbax).

The iterator state is a small JSON dict (`it.get_state()`); restoring it with
`it.set_state(state)` on an iterator built from the same config, seq_len,
batch size, seed and process index/count yields exactly the batches that would
have followed. Each process writes its own `process_{i}-of-{n}.json`.

With an orbax `CheckpointManager` (what the trainer uses), the iterator is one
item of a Composite checkpoint, through grain's registered handler:

  import orbax.checkpoint as ocp
  from longgen_jax.data import ITERATOR_ITEM, iterator_checkpoint_args, iterator_restore_args

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(train_state),
      **{ITERATOR_ITEM: iterator_checkpoint_args(data_it)}))
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      **{ITERATOR_ITEM: iterator_restore_args(data_it)}))
  data_it = restored[ITERATOR_ITEM]      # the same object, state restored in place

Without orbax: `save_iterator(it, directory)` / `restore_iterator(it, directory)`.
"""

from __future__ import annotations

import os

import grain
from etils import epath

from longgen_jax.data.errors import DataError, one_line

ITERATOR_ITEM = "data_iter"


def _require_orbax_args():
  if not hasattr(grain.checkpoint, "CheckpointSave"):
    raise DataError("grain.checkpoint.CheckpointSave is missing: orbax-checkpoint is not installed")


def iterator_checkpoint_args(it: grain.DatasetIterator):
  """Orbax save args for the iterator (an item of `ocp.args.Composite`)."""
  _require_orbax_args()
  return grain.checkpoint.CheckpointSave(it)


def iterator_restore_args(it: grain.DatasetIterator):
  """Orbax restore args: restores the state into `it` in place."""
  _require_orbax_args()
  return grain.checkpoint.CheckpointRestore(it)


def save_iterator(it: grain.DatasetIterator, directory: str) -> None:
  """Writes this process's iterator state under `directory` (created if needed)."""
  os.makedirs(directory, exist_ok=True)
  grain.checkpoint.CheckpointHandler().save(epath.Path(directory), item=it)


def restore_iterator(it: grain.DatasetIterator, directory: str) -> grain.DatasetIterator:
  """Restores this process's iterator state from `directory` into `it`; returns `it`."""
  if not os.path.isdir(directory):
    raise DataError(f"iterator checkpoint directory not found: {directory}")
  try:
    return grain.checkpoint.CheckpointHandler().restore(epath.Path(directory), item=it)
  except ValueError as e:
    raise DataError(f"cannot restore the data iterator from {directory}: {one_line(e)}") from None
