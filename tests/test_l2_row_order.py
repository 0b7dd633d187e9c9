"""The L2 model of ``benchmarks/l2_row_order.py`` (a CPU model, no timing)."""

import pytest

from benchmarks import l2_row_order as m


def test_hand_counted_case():
  """One CTA at a time, a one-tile cache, rows reading tiles 0..r.
  Shortest first: row 0 [t0 miss], row 1 [t0 hit, t1 miss], row 2 [t0, t1, t2 all miss].
  Longest first: row 2 [3 misses], row 1 [t0, t1 miss] (t2 held), row 0 [t0 miss] (t1 held)."""
  assert m.simulate(3, 1, 1, 1, longest_first=False) == (5, 6, 6)
  assert m.simulate(3, 1, 1, 1, longest_first=True) == (6, 6, 6)


@pytest.mark.parametrize("longest_first", [False, True])
def test_only_compulsory_misses_when_a_head_fits(longest_first):
  misses, reads, _ = m.simulate(64, 2, 8, 64, longest_first)
  assert misses == 2 * 64 and reads == 2 * 64 * 65 // 2


def test_longest_first_keeps_ctas_in_lockstep_when_a_head_overflows():
  sf, reads, t_sf = m.simulate(64, 2, 8, 16, longest_first=False)
  lf, _, t_lf = m.simulate(64, 2, 8, 16, longest_first=True)
  assert lf < 0.2 * sf and sf > 0.5 * reads
  assert t_lf < t_sf                      # and a shorter tail


def test_bad_input_fails_loudly(capsys):
  with pytest.raises(ValueError, match="must be >= 1"):
    m.simulate(0, 1, 1, 1, False)
  assert m.main(["--lengths", "1000"]) == 2
  assert "multiple of --rows-per-cta" in capsys.readouterr().err


def test_main_prints_both_orders(capsys):
  assert m.main(["--lengths", "16384", "--heads", "2"]) == 0
  out = capsys.readouterr().out
  assert "shortest first" in out and "longest first" in out and "16384" in out
