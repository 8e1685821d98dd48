"""Region hashes: every capture lists a digest for each 64 KiB region of used data.

The digests are checked against a computation written here from FORMAT.md's words
(section 12), over the source partition read again; a resumed capture lists the
same digests as one that ran through; an unreadable region is UNKNOWN.
"""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import pytest
import xxhash
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, fill_tree

from rescue.cli import main
from rescue.filesystems import registry
from rescue.image.regions import (
    REGION_SIZE,
    UNKNOWN,
    RegionHasher,
    read_regions,
    regions_name,
)


def expected_regions(data: bytes, runs: list[tuple[int, int]], size: int) -> dict[int, bytes]:
    """FORMAT.md section 12, computed directly: ``runs`` are used byte ranges (offset, length)
    of a partition whose bytes are ``data``."""
    per: dict[int, list[tuple[int, int]]] = {}
    for start, length in runs:
        off, n = start, length
        while n:
            region, within = divmod(off, size)
            take = min(n, size - within)
            lst = per.setdefault(region, [])
            if lst and sum(lst[-1]) == within:
                lst[-1] = (lst[-1][0], lst[-1][1] + take)
            else:
                lst.append((within, take))
            off += take
            n -= take
    out = {}
    for region, lst in per.items():
        base = region * size
        body = b"".join(data[base + w : base + w + n] for w, n in lst)
        body += b"".join(struct.pack("<II", w, n) for w, n in lst) + struct.pack("<I", len(lst))
        out[region] = xxhash.xxh3_128_digest(body)
    return out


def hashed(
    feeds: list[tuple[int, bytes]], spoiled: tuple[tuple[int, int], ...] = (), size: int = 4096
) -> dict[int, bytes]:
    out = io.BytesIO()
    h = RegionHasher(out, size)
    for lo, hi in spoiled:
        h.spoil(lo, hi)
    for off, data in feeds:
        h.feed(off, [memoryview(data)])
    h.close()
    out.seek(0)
    return dict(read_regions(out))


def test_digests_follow_the_data_and_the_used_runs_not_the_read_pieces() -> None:
    rng = random.Random(1)
    data = rng.randbytes(64 * 1024)
    runs = [(0, 5000), (5000, 100), (9000, 20000), (40000, 1), (50000, 14000)]
    want = expected_regions(data, runs, 4096)
    # the same runs fed whole, and cut into random pieces
    assert hashed([(o, data[o : o + n]) for o, n in runs]) == want
    pieces = []
    for start, length in runs:
        o, n = start, length
        while n:
            k = min(n, rng.randint(1, 3000))
            pieces.append((o, data[o : o + k]))
            o, n = o + k, n - k
    assert hashed(pieces) == want
    # a changed byte, and a block that became free, change their region's digest only
    changed = bytearray(data)
    changed[10000] ^= 1
    assert hashed([(o, bytes(changed[o : o + n])) for o, n in runs]) == {
        **want, 2: expected_regions(bytes(changed), runs, 4096)[2]}  # fmt: skip
    fewer = [(0, 5000), (5000, 100), (9000, 20000), (50000, 14000)]
    assert hashed([(o, data[o : o + n]) for o, n in fewer]) == expected_regions(data, fewer, 4096)
    assert 9 in want and 9 not in expected_regions(data, fewer, 4096)
    # an unreadable range spoils exactly the regions it touches
    spoilt = hashed([(o, data[o : o + n]) for o, n in runs], ((8191, 8193),))
    assert spoilt == {**want, 1: UNKNOWN, 2: UNKNOWN}
    with pytest.raises(ValueError, match="increasing"):
        hashed([(9000, data[:10]), (100, data[:10])])


def _stored_regions(image: Path, part: str) -> dict[int, bytes]:
    with (image / regions_name(part)).open("rb") as f:
        return dict(read_regions(f))


@need("root", "loop")
def test_a_capture_lists_the_digest_of_every_used_region(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    disk = loop_disk_factory(96, "gpt", [PartSpec(None, "ext4", label="data")])
    mnt = disk.mount(0, tmp_path / "fill")
    fill_tree(mnt, 5, 4)
    disk.umount(mnt)
    image = tmp_path / "img"
    assert main(["capture", disk.path, str(image), "--json"]) == 0
    rec = json.loads((image / "rescue.json").read_text())["partitions"][0]
    assert rec["region_size"] == REGION_SIZE
    name = rec["name"]
    assert [f["name"] for f in rec["regions"]] == [regions_name(name)]
    with open(disk.parts[0], "rb") as f:
        data = f.read()
        alloc = registry.get("ext4").read_allocation(io.BytesIO(data), len(data))  # type: ignore[union-attr]
    bs = alloc.block_size
    runs = [(a * bs, min(n * bs, len(data) - a * bs)) for a, n in alloc.runs()]
    want = expected_regions(data, runs, REGION_SIZE)
    assert len(want) > 10
    assert _stored_regions(image, name) == want
    assert main(["verify", str(image)]) == 0
    # the list is one of the image's files: a changed byte is found by verify
    path = image / regions_name(name)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(raw)
    assert main(["verify", str(image)]) != 0
