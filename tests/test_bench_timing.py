"""The benchmarks' shared timing method (benchmarks/bench_timing.py): call counts and sync points.

No timing is asserted (timings never go into unit tests): only that each loop is back-to-back calls
closed by ONE synchronisation on the last output, that n and the loops follow the arguments, and
that the median is taken over loops.
"""

import time

from benchmarks import bench_timing


class _Recorder:
  def __init__(self, dt=0.0):
    self.calls, self.syncs, self.dt = 0, [], dt

  def call(self):
    self.calls += 1
    if self.dt:
      time.sleep(self.dt)
    return self.calls

  def sync(self, out):
    self.syncs.append(out)


def test_loops_are_back_to_back_with_one_sync_each():
  r = _Recorder()
  t = bench_timing.time_cell(r.call, r.sync, loops=4, target_s=0.0, min_n=3, max_n=10)
  assert t.n == 3 and len(t.loop_ms) == 4
  assert r.calls == 2 + 4 * 3                    # compile call, sizing call, 4 loops of 3
  assert r.syncs == [1, 2, 5, 8, 11, 14]         # after each single call, then each loop's last
  assert t.output == 14
  assert sorted(t.loop_ms)[1] <= t.ms <= sorted(t.loop_ms)[2]


def test_n_is_sized_from_one_call_and_capped():
  r = _Recorder(dt=0.002)
  t = bench_timing.time_cell(r.call, r.sync, loops=1, target_s=10.0, min_n=1, max_n=5)
  assert t.n == 5
  t = bench_timing.time_cell(r.call, r.sync, loops=1, target_s=0.0, min_n=2, max_n=5)
  assert t.n == 2


def test_sync_each_syncs_every_call():
  r = _Recorder()
  bench_timing.time_sync_each(r.call, r.sync, reps=4)
  assert r.syncs == [1, 2, 3, 4]


def test_warm_up_runs_unrecorded_calls_after_the_first():
  r = _Recorder(dt=0.002)
  t = bench_timing.time_cell(r.call, r.sync, loops=1, target_s=0.0, min_n=1, max_n=1,
                             warm_s=0.05)
  assert r.calls > 3 and len(t.loop_ms) == 1          # compile + warm-up calls + sizing + 1 loop
  assert r.syncs == list(range(1, r.calls + 1))      # warm-up calls are synchronised one by one
