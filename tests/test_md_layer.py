"""md RAID member superblocks read without the md driver: written here, byte for byte.

This machine's kernel has no md driver, so no real array can be made; the boot
test (scripts/boot-test) makes real ones with mdadm inside the live system. Here
the superblocks are packed by hand after the kernel's layouts (``struct
mdp_superblock_1``, ``mdp_super_t``): where each version sits, what a RAID1
member's data area holds (a real ext4 made by mkfs.ext4), and hostile ones
(garbage after the magic, a data area past the end or over the superblock, a
superblock that says it lies elsewhere, members too small to hold one) that
must be taken for no member, or refused, and never crash the probe.
"""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
import uuid as uuid_mod
from pathlib import Path

import pytest

from rescue.containers import md, stack
from rescue.containers.base import PROBE_BYTES, LayerInfo, read_at
from rescue.errors import FilesystemError

KiB, MiB = 1 << 10, 1 << 20
SET_UUID = uuid_mod.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")


def sb1(
    super_offset: int,
    data_offset: int,
    data_size: int,
    *,
    level: int = 1,
    major: int = 1,
    name: bytes = b"rescue:0",
) -> bytes:
    """A 1.x superblock (offsets and sizes in bytes, stored as sectors)."""
    block = bytearray(256)
    struct.pack_into("<IIII", block, 0, md.MAGIC, major, 0, 0)
    block[16:32] = SET_UUID.bytes
    block[32 : 32 + len(name)] = name
    struct.pack_into("<iiQII", block, 72, level, 0, data_size // 512, 0, 2)
    struct.pack_into("<QQQ", block, 128, data_offset // 512, data_size // 512, super_offset // 512)
    return bytes(block)


def sb090(data_kib: int, *, level: int = 1) -> bytes:
    words = [0] * 32
    words[0], words[1], words[2] = md.MAGIC, 0, 90
    words[5], words[13], words[14], words[15] = 0x11111111, 0x22222222, 0x33333333, 0x44444444
    words[8], words[10] = data_kib, 2
    raw = bytearray(struct.pack("<32I", *words))
    struct.pack_into("<i", raw, 7 * 4, level)
    return bytes(raw)


def v090_at(size: int) -> int:
    return (size & ~(64 * KiB - 1)) - 64 * KiB


def v10_at(size: int) -> int:
    return (size - 8 * KiB) & ~(4 * KiB - 1)


def member(size: int, at: int, block: bytes) -> io.BytesIO:
    buf = bytearray(size)
    buf[at : at + len(block)] = block
    return io.BytesIO(bytes(buf))


def probe(f: io.BytesIO, size: int | None = None) -> md.Container | None:
    size = len(f.getbuffer()) if size is None else size
    return md.probe(read_at(f, 0, min(PROBE_BYTES, size)), f, size)


# where each version sits and what is stored always


def test_v12_data_after_superblock_and_bitmap() -> None:
    size = 8 * MiB
    f = member(size, 4096, sb1(4096, 1 * MiB, size - 1 * MiB))
    found = probe(f)
    assert found is not None and found.kind == "md" and found.uuid == str(SET_UUID)
    assert found.data_offset == 1 * MiB
    assert found.metadata == ((0, 1 * MiB),)
    assert ("metadata", "1.2") in found.details and ("level", "RAID1") in found.details
    opened = md.open_layer(f, size, found)
    (volume,) = opened.volumes
    assert volume.size == size - 1 * MiB
    assert list(volume.outer_ranges(0, 4096)) == [(1 * MiB, 4096)]


def test_v11_at_the_start() -> None:
    size = 4 * MiB
    found = probe(member(size, 0, sb1(0, 64 * KiB, 2 * MiB)))
    assert found is not None and ("metadata", "1.1") in found.details
    assert found.metadata == ((0, 64 * KiB), (64 * KiB + 2 * MiB, size - 64 * KiB - 2 * MiB))


@pytest.mark.parametrize("size", [4 * MiB, 4 * MiB + 3 * 512, 5 * MiB - 4 * KiB + 512])
def test_v10_at_the_end_data_at_zero(size: int) -> None:
    at = v10_at(size)
    data = at - 128 * KiB  # a bitmap and bad-block log between the data and the superblock
    found = probe(member(size, at, sb1(at, 0, data)))
    assert found is not None and ("metadata", "1.0") in found.details
    assert found.data_offset == 0
    assert found.metadata == ((data, size - data),)


def test_v090_in_the_last_64k() -> None:
    size = 6 * MiB + 5 * KiB
    at = v090_at(size)
    f = member(size, at, sb090(at // KiB))
    found = probe(f)
    assert found is not None and ("metadata", "0.90") in found.details
    # as mdadm --detail prints it: 11111111:22222222:33333333:44444444
    assert found.uuid == "11111111-2222-2222-3333-333344444444"
    assert found.metadata == ((at, size - at),)
    (volume,) = md.open_layer(f, size, found).volumes
    assert volume.size == at


@pytest.mark.parametrize(
    ("role", "features", "why"),
    [(0xFFFF, 0, "a spare"), (0xFFFE, 0, "a failed member"), (1, 2, "being rebuilt")],
)
def test_a_member_holding_no_whole_copy_is_not_read(role: int, features: int, why: str) -> None:
    size = 4 * MiB
    block = bytearray(sb1(4096, 1 * MiB, 2 * MiB))
    struct.pack_into("<I", block, 8, features)  # feature_map
    struct.pack_into("<Q", block, 152, 1000)  # recovery_offset
    struct.pack_into("<I", block, 160, 1)  # dev_number: its role is the second
    f = member(size, 4096, bytes(block) + struct.pack("<HH", 0, role))
    found = probe(f)
    assert found is not None  # a member all the same: stored whole, with the reason
    with pytest.raises(FilesystemError, match=why):
        md.open_layer(f, size, found)


def test_other_levels_are_members_stored_whole() -> None:
    size = 4 * MiB
    f = member(size, 4096, sb1(4096, 1 * MiB, 2 * MiB, level=5))
    found = probe(f)
    assert found is not None and ("level", "RAID5") in found.details
    with pytest.raises(FilesystemError, match="RAID5"):
        md.open_layer(f, size, found)


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs is not installed")
def test_ext4_inside_a_v12_member_is_read_by_used_blocks(tmp_path: Path) -> None:
    fs = tmp_path / "fs.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", str(fs), "32M"], check=True, capture_output=True
    )
    size, data_at = 40 * MiB, 2 * MiB
    part = tmp_path / "member.img"
    with part.open("wb") as out:
        out.truncate(size)
        out.seek(4096)
        out.write(sb1(4096, data_at, size - data_at))
        out.seek(4096 + 4096)
        out.write(b"bitmap" * 100)  # the write-intent bitmap: stored as metadata
        out.seek(data_at)
        out.write(fs.read_bytes())
    with part.open("rb") as f:
        reading = stack.read_partition(f, size)
    (layer,) = reading.layers
    assert (layer.kind, layer.state) == ("md", LayerInfo.READ)
    (volume,) = layer.volumes
    assert volume.fstype == "ext4"
    alloc = reading.alloc
    assert alloc.fstype == "md"
    assert alloc.used_blocks * alloc.block_size < 12 * MiB  # the empty ext4's blocks, and 2 MiB
    first_blocks = alloc.bitmap[0]
    assert first_blocks & 0b11 == 0b11  # the superblock and bitmap (before the data) are stored


# hostile superblocks: no member, or refused; never a crash


@pytest.mark.parametrize(
    ("at", "block", "why"),
    [
        pytest.param(*case, id=case[2])
        for case in [
            (4096, sb1(4096, 1 * MiB, 64 * MiB), "a data area past the end"),
            (4096, sb1(4096, 8 * MiB, 1 * MiB), "a data area starting past the end"),
            (4096, sb1(4096, 0, 2 * MiB), "a data area over the 1.2 superblock"),
            (0, sb1(0, 0, 2 * MiB), "a data area over the 1.1 superblock"),
            (4096, sb1(4096, 1 * MiB, 0), "an empty data area"),
            (4096, sb1(4096, 2**60, 2**60), "sectors beyond any disk"),
            (
                v10_at(4 * MiB),
                sb1(v10_at(4 * MiB), 0, 4 * MiB - 4096),
                "1.0 data over its superblock",
            ),
            (4096, sb1(0, 1 * MiB, 1 * MiB), "a 1.2 block saying it lies at 0"),
            (4096, sb1(4096, 1 * MiB, 1 * MiB, major=2), "an unknown major version"),
            (v090_at(4 * MiB), sb090(4 * 1024), "a 0.90 data area over its superblock"),
            (v090_at(4 * MiB), sb090(0), "a 0.90 member with no data"),
            (
                4096 + 512,
                sb1(4096 + 512, 1 * MiB, 1 * MiB),
                "a superblock where none is looked for",
            ),
        ]
    ],
)
def test_hostile_superblocks_are_no_member(at: int, block: bytes, why: str) -> None:
    size = 4 * MiB
    f = member(size, at, block)
    assert probe(f) is None, why
    with pytest.raises(FilesystemError):
        md.open_layer(f, size, stack.find_container(f, size) or _fake())


def _fake() -> md.Container:
    return md.Container(kind="md", name="md member")


def test_garbage_after_the_magic_never_crashes() -> None:
    rnd = random.Random(7)
    size = 2 * MiB
    for _ in range(300):
        at = rnd.choice([0, 4096, v10_at(size)])
        block = (
            struct.pack("<I", md.MAGIC) + struct.pack("<I", rnd.choice([0, 1])) + rnd.randbytes(248)
        )
        f = member(size, at, block)
        try:
            found = probe(f)
            if found is not None:
                md.open_layer(f, size, found)
        except FilesystemError:
            pass


@pytest.mark.parametrize(
    "size", [0, 1, 255, 256, 4096, 4096 + 255, 8191, 8192, 12 * KiB, 128 * KiB]
)
def test_tiny_members(size: int) -> None:
    block = sb1(0, 512, max(size - 512, 512))
    f = member(size, 0, block[:size])
    found = probe(f, size)
    if found is not None:  # only a member the superblock fits: its data inside the member
        assert found.data_offset is not None and found.data_offset < size


def test_a_member_shorter_than_it_says() -> None:
    """The device reads fewer bytes than its size (a truncated file): no member, no crash."""
    size = 4 * MiB
    f = member(1 * MiB, 4096, sb1(4096, 512 * KiB, 2 * MiB))  # data past the bytes there are
    found = probe(f, size)
    assert found is not None  # the superblock is whole; what it points to is read later
    (volume,) = md.open_layer(f, size, found).volumes
    assert volume.pread(volume.size - 10, 100) == b""
    assert probe(member(2 * MiB, 0, b""), size) is None  # the 1.0 and 0.90 places not there
