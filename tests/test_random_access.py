"""Random access to an image's partition: used blocks as on the source, free blocks as zeros."""

from __future__ import annotations

import random
import subprocess
import threading
from pathlib import Path

import pytest
from capabilities import need
from diskbench import ext4_with_garbage, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rescue.cli import main
from rescue.errors import UnsupportedImageError
from rescue.image.partclone import PIECE, BlockRanks
from rescue.image.random_access import PartitionReader

pytestmark = need("root", "loop")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    """(stream, the partition, the partition with its free blocks zeroed)."""
    d = tmp_path_factory.mktemp("ra")
    part, data, expected = ext4_with_garbage(
        d, seed=5, files=60, largest=400_000, size_mib=96, garbage_mib=80
    )
    image = d / "image"
    assert main(["capture", str(part), str(image), "--split", "700K"]) == 0
    stream = image / "part.ext4-ptcl-img.zst"
    return stream, data, expected


def test_whole_partition_reads_back(captured: tuple[Path, bytes, bytes]) -> None:
    stream, _data, expected = captured
    reader = PartitionReader(stream)
    assert reader.size == len(expected)
    assert reader.pread(0, reader.size) == expected
    assert reader.pread(reader.size - 10, 100) == expected[-10:]
    assert reader.pread(reader.size, 10) == b""
    reader.close()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 96 << 20), st.integers(0, 3 << 20))
def test_random_ranges(captured: tuple[Path, bytes, bytes], offset: int, length: int) -> None:
    stream, _data, expected = captured
    reader = PartitionReader(stream)
    try:
        assert reader.pread(offset, length) == expected[offset : offset + length]
    finally:
        reader.close()


def test_filesystem_reads_through_the_reader(
    captured: tuple[Path, bytes, bytes], tmp_path: Path
) -> None:
    """debugfs reads files out of the bytes the reader returns (no restore) intact."""
    stream, _data, _expected = captured
    reader = PartitionReader(stream)
    view = tmp_path / "view.img"
    view.write_bytes(reader.pread(0, reader.size))
    reader.close()
    run("e2fsck", "-fn", str(view))
    tree = stream.parent.parent / "tree"
    for name in ("f0", "f7", "f59"):
        out = subprocess.run(
            ["debugfs", "-R", f"cat /{name}", str(view)], capture_output=True, check=True
        ).stdout
        assert out == (tree / name).read_bytes()


def test_clonezilla_stream_without_table_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "p.zst"
    subprocess.run(f"head -c 100000 /dev/urandom | zstd -q -c > {plain}", shell=True, check=True)
    with pytest.raises(UnsupportedImageError, match="seek table"):
        PartitionReader(plain)


def test_used_runs_match_the_bitmap_bit_by_bit() -> None:
    """Runs found a word at a time, across bitmap pieces and lookup windows."""
    rng = random.Random(9)
    size = (PIECE + 4096) * 8  # blocks: the bitmap spans two pieces
    bits = bytearray(size // 8)
    pos = 0
    while pos < size:  # runs of every length, used and free
        n = rng.choice([1, 2, 7, 8, 9, 63, 64, 65, 700, 5000])
        if rng.random() < 0.5:
            for b in range(pos, min(pos + n, size)):
                bits[b >> 3] |= 1 << (b & 7)
        pos += n
    reader = PartitionReader.__new__(PartitionReader)
    reader._ranks = BlockRanks(bytes(bits))
    edge = PIECE * 8
    for first, stop in [(0, 5000), (edge - 77, edge + 300), (edge - 4096, edge + 4096), (3, 4)]:
        runs = list(reader.used_runs(first, stop))
        used = {b for start, n in runs for b in range(start, start + n)}
        assert used == {b for b in range(first, stop) if bits[b >> 3] >> (b & 7) & 1}
        assert all(n > 0 for _, n in runs)
        assert [s for s, _ in runs] == sorted(s for s, _ in runs)


def test_threads_reading_ahead_get_the_partition(captured: tuple[Path, bytes, bytes]) -> None:
    """Requests from several threads (as the FUSE server makes them) over used and free
    blocks and frame ends, with frames decoded ahead and a cache smaller than the stream."""
    stream, _data, expected = captured
    reader = PartitionReader(stream, cache_frames=3, prefetch=2)
    rng = random.Random(11)
    spans = [
        (rng.randrange(0, reader.size), rng.choice([1, 4096, 131072, 1 << 20, 3 << 20]))
        for _ in range(200)
    ]
    spans += [(off, 1 << 20) for off in range(0, reader.size, 1 << 20)]  # sequential
    bad: list[tuple[int, int]] = []

    def work(part: list[tuple[int, int]]) -> None:
        for off, n in part:
            if reader.pread(off, n) != expected[off : off + n]:
                bad.append((off, n))

    threads = [threading.Thread(target=work, args=(spans[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.close()
    assert not bad
