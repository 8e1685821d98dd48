"""The layout arithmetic of grow and fit, on its own (the restores that use it are in
test_grow.py and test_shrink.py, on real disks)."""

from __future__ import annotations

import pytest

from rescue.errors import BadInputError, RefusedError
from rescue.filesystems.layers import MD
from rescue.operations.layout_plan import (
    GPT_BACKUP,
    MiB,
    Slot,
    TooSmallError,
    grown_script,
    plan_fit,
    plan_growth,
)

GiB = 1024 * MiB

PARTS = [
    Slot("sda1", 1, 1 * MiB, 100 * MiB, "vfat"),
    Slot("sda2", 2, 101 * MiB, 500 * MiB, "ext4"),
    Slot("sda3", 3, 601 * MiB, 200 * MiB, "swap"),
]


def test_the_last_partition_takes_the_room() -> None:
    growth = plan_growth(PARTS, "gpt", 2 * GiB)
    assert growth is not None
    assert (growth.name, growth.start, growth.old_size) == ("sda3", 601 * MiB, 200 * MiB)
    end = (2 * GiB - GPT_BACKUP) // MiB * MiB
    assert growth.start + growth.new_size == end
    assert growth.moved == ()


def test_a_middle_partition_grows_and_the_later_ones_move_to_the_end() -> None:
    growth = plan_growth(PARTS, "gpt", 2 * GiB, number=2)
    assert growth is not None
    end = (2 * GiB - GPT_BACKUP) // MiB * MiB
    ((name, start, size),) = growth.moved
    assert (name, size) == ("sda3", 200 * MiB)
    assert start + size <= end and start % MiB == 0
    assert growth.start + growth.new_size == start  # no gap, no overlap
    assert growth.starts() == {"sda3": start}


def test_no_growth_when_there_is_no_room_worth_it() -> None:
    assert plan_growth(PARTS, "gpt", 801 * MiB + GPT_BACKUP) is None


def test_growth_refuses_what_cannot_be() -> None:
    with pytest.raises(BadInputError, match="no partition 7"):
        plan_growth(PARTS, "gpt", 2 * GiB, number=7)
    with pytest.raises(BadInputError, match="no partition table"):
        plan_growth(PARTS, None, 2 * GiB, number=1)
    logical = [*PARTS, Slot("sda5", 5, 801 * MiB, 10 * MiB, "ext4")]
    with pytest.raises(RefusedError, match="logical partitions"):
        plan_growth(logical, "dos", 2 * GiB, number=2)


def test_fit_gives_the_minimum_plus_a_share_and_keeps_the_order() -> None:
    fit = plan_fit(PARTS, {"sda2": 150 * MiB}, "gpt", 600 * MiB)
    first, second, third = fit.placements
    assert (first.start, first.size) == (1 * MiB, 100 * MiB)  # no minimum given: its size
    assert 150 * MiB <= second.size < 500 * MiB and second.shrinks
    assert second.start == 101 * MiB
    assert third.start == second.start + second.size and third.moves
    assert third.start + third.size <= 600 * MiB - GPT_BACKUP
    assert "partition 2 (ext4) shrinks from" in fit.describe()


def test_fit_names_the_smallest_disk_that_would_do() -> None:
    with pytest.raises(TooSmallError) as refused:
        plan_fit(PARTS, {"sda2": 150 * MiB}, "gpt", 300 * MiB)
    # the partitions end at 451 MiB at their minimums; the backup GPT rounds it up to 452 MiB
    assert f"at least {452 * MiB} bytes" in refused.value.message


def test_a_logical_partition_grows_with_its_extended_partition() -> None:
    script = (
        "label: dos\n"
        "/dev/sda1 : start=2048, size=204800, type=83\n"
        "/dev/sda2 : start=206848, size=409600, type=5\n"
        "/dev/sda5 : start=208896, size=407552, type=83\n"
    )
    parts = [
        Slot("sda1", 1, 2048 * 512, 204800 * 512, "ext4"),
        Slot("sda5", 5, 208896 * 512, 407552 * 512, "ext4"),
    ]
    growth = plan_growth(parts, "dos", 2 * GiB)
    assert growth is not None and growth.name == "sda5"
    grown = grown_script(script, growth, 512)
    new_size = growth.new_size // 512
    assert f"/dev/sda5 : start=208896, size={new_size}, type=83" in grown.splitlines()
    extended = next(line for line in grown.splitlines() if line.startswith("/dev/sda2"))
    assert f"size={208896 - 206848 + new_size}" in extended


def test_a_raid_member_keeps_its_size() -> None:
    """md superblocks 1.0 and 0.90 sit at the member's end: a grown partition would lose
    its array. The default keeps the layout; asking for it is refused with the reason."""
    member = [*PARTS[:2], Slot("sda3", 3, 601 * MiB, 200 * MiB, MD.name)]
    assert plan_growth(member, "gpt", 2 * GiB) is None
    with pytest.raises(RefusedError, match="RAID"):
        plan_growth(member, "gpt", 2 * GiB, number=3)
    assert plan_growth(member, "gpt", 2 * GiB, number=2) is not None  # another one may
