"""The capacity bench's arithmetic (bench/capacity.py): Jain's index, max-min fair shares, what a rolling quota
allows, and the fairness figure built from them."""

from __future__ import annotations

import pytest

from bench.capacity import allowed_starts, jain_index, max_min_fair, normalised_throughput, parse_settings


def test_jain_index_is_one_when_equal_and_one_over_n_when_one_caller_has_everything():
    assert jain_index([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain_index([5.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert jain_index([1.0, 0.5]) == pytest.approx(2.25 / 2.5)
    assert jain_index([]) is None and jain_index([0.0, 0.0]) is None


def test_max_min_fair_gives_small_demands_in_full_and_shares_the_rest():
    assert max_min_fair(45, [60, 12, 3]) == pytest.approx([30, 12, 3])
    assert max_min_fair(30, [60, 60, 60]) == pytest.approx([10, 10, 10])
    assert max_min_fair(100, [10, 20, 5]) == pytest.approx([10, 20, 5])  # enough for everyone
    assert max_min_fair(10, [0, 40, 40]) == pytest.approx([0, 5, 5])  # no demand, no share


def test_normalised_throughput_is_fair_only_when_each_caller_got_its_max_min_share():
    fair = normalised_throughput([30, 12, 3], [60, 12, 3])
    assert fair == pytest.approx([1, 1, 1]) and jain_index(fair) == pytest.approx(1.0)
    # first come, first served behind a burst: the big caller took what the small ones were due
    greedy = normalised_throughput([43, 2, 0], [60, 12, 3])
    assert jain_index(greedy) < 0.6
    assert normalised_throughput([5, 0, 0], [5, 0, 0]) == [1.0]  # callers without demand are left out


def test_allowed_starts_is_the_full_bucket_plus_the_refill():
    assert allowed_starts(60, 0) == 60
    assert allowed_starts(60, 30) == 90
    assert allowed_starts(60_000, 60, cost=1000) == 120
    assert allowed_starts(30, -1) == 30


def test_settings_are_name_value_pairs():
    assert parse_settings(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(SystemExit):
        parse_settings(["NOVALUE"])
