"""The bitmap helpers every allocation map uses, checked against a plain model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rescue.filesystems.base import bitmap_from_runs, bitmap_runs, count_bits


def _naive_runs(bits: list[bool]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i, b in enumerate(bits):
        if not b:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


@given(st.lists(st.booleans(), min_size=0, max_size=700))
def test_runs_match_a_bit_by_bit_model(bits: list[bool]) -> None:
    total = len(bits)
    runs = _naive_runs(bits)
    bm = bitmap_from_runs(total, runs)
    assert list(bitmap_runs(bytes(bm), total)) == runs
    assert count_bits(bytes(bm), total) == sum(bits)


def test_bits_past_the_end_are_ignored() -> None:
    assert list(bitmap_runs(b"\xff\xff", 11)) == [(0, 11)]
    assert count_bits(b"\xff\xff", 11) == 11


def test_long_runs_of_full_bytes() -> None:
    bm = bitmap_from_runs(10_000, [(3, 5000), (6000, 1)])
    assert list(bitmap_runs(bytes(bm), 10_000)) == [(3, 5000), (6000, 1)]
