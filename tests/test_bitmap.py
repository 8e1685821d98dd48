"""The bitmap helpers every allocation map uses, checked against a plain model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rescue.filesystems.base import bitmap_from_runs, bitmap_runs, clear_run, count_bits


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


@given(st.lists(st.booleans(), min_size=1, max_size=300), st.data())
def test_clear_run_matches_a_model(bits: list[bool], data: st.DataObject) -> None:
    first = data.draw(st.integers(0, len(bits) - 1))
    count = data.draw(st.integers(0, len(bits) - first))
    bm = bitmap_from_runs(len(bits), [(i, 1) for i, b in enumerate(bits) if b])
    clear_run(bm, first, count)
    want = [b and not first <= i < first + count for i, b in enumerate(bits)]
    assert list(bitmap_runs(bytes(bm), len(bits))) == [(i, 1) for i, b in enumerate(want) if b] or (
        sum(n for _, n in bitmap_runs(bytes(bm), len(bits))) == sum(want)
    )
    assert count_bits(bytes(bm), len(bits)) == sum(want)


def test_bits_past_the_end_are_ignored() -> None:
    assert list(bitmap_runs(b"\xff\xff", 11)) == [(0, 11)]
    assert count_bits(b"\xff\xff", 11) == 11


def test_long_runs_of_full_bytes() -> None:
    bm = bitmap_from_runs(10_000, [(3, 5000), (6000, 1)])
    assert list(bitmap_runs(bytes(bm), 10_000)) == [(3, 5000), (6000, 1)]
