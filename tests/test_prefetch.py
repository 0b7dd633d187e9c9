"""The trainer's batch prefetcher: same batches, exact checkpoint position, errors surface."""

import json

import numpy as np
import pytest

from longgen_jax import data as data_lib
from longgen_jax.data.config import default_data_config
from longgen_jax.data.prefetch import Prefetcher


def _iterator():
  cfg = default_data_config()
  return data_lib.build_train_iterator(cfg, tokenizer=data_lib.get_tokenizer(cfg.tokenizer),
                                       seq_len=64, batch_size=4, seed=3)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_batches_and_consumed_position(depth):
  plain = _iterator()
  want = [next(plain)["inputs"] for _ in range(6)]
  feed = Prefetcher(_iterator(), depth=depth, transfer=lambda b: b["inputs"] * 2)
  try:
    for k in range(4):
      host, moved = next(feed)
      np.testing.assert_array_equal(host["inputs"], want[k])
      np.testing.assert_array_equal(moved, want[k] * 2)
    # The thread has read ahead, but the saved position is after the 4th CONSUMED batch.
    state = json.loads(feed.frozen().get_state())
  finally:
    feed.close()
  resumed = _iterator()
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], want[4])
  np.testing.assert_array_equal(next(resumed)["inputs"], want[5])


def test_frozen_state_does_not_move_with_later_batches():
  feed = Prefetcher(_iterator(), depth=2)
  try:
    next(feed)
    frozen = feed.frozen()
    before = frozen.get_state()
    next(feed)
    next(feed)
    assert frozen.get_state() == before
    assert feed.frozen().get_state() != before
  finally:
    feed.close()


class _Failing:
  def __init__(self, fail_at):
    self.i, self.fail_at = 0, fail_at

  def get_state(self):
    return {"i": self.i}

  def __next__(self):
    if self.i == self.fail_at:
      raise ValueError("broken shard")
    self.i += 1
    return {"inputs": np.full((1,), self.i)}


@pytest.mark.parametrize("depth", [0, 2])
def test_errors_reach_the_consumer_in_order(depth):
  feed = Prefetcher(_Failing(2), depth=depth)
  try:
    assert int(next(feed)[0]["inputs"][0]) == 1
    assert int(next(feed)[0]["inputs"][0]) == 2
    with pytest.raises(ValueError, match="broken shard"):
      next(feed)
  finally:
    feed.close()


def test_negative_depth_is_refused():
  with pytest.raises(ValueError, match="depth"):
    Prefetcher(_Failing(9), depth=-1)
