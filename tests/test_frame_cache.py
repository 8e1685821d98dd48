"""The decoded-frame cache of random reads: one decode per frame however many threads
ask, frames decoded ahead of sequential reads, damage reported to every reader."""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from rescue.errors import ImageDamagedError
from rescue.image import seekable
from rescue.image.seekable import SeekableZstdReader, SeekableZstdWriter, SeekTable
from rescue.image.volumes import VolumeReader

FRAME = 64 * 1024


def _blob(n: int = 48 * FRAME) -> tuple[bytes, bytes]:
    rng = random.Random(3)
    data = b"".join(rng.randbytes(300) + b"x" * rng.randrange(0, 3000) for _ in range(n // 1000))
    data = data[:n]
    out = io.BytesIO()
    w = SeekableZstdWriter(out, level=1, frame_size=FRAME, threads=1)
    w.write(data)
    w.close()
    return data, out.getvalue()


DATA, BLOB = _blob()


def _reader(blob: bytes = BLOB, **kw: int) -> SeekableZstdReader:
    f = io.BytesIO(blob)
    table = SeekTable.read_from(f)
    assert table is not None and table.frames >= 48
    return SeekableZstdReader(f, table, **kw)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many times each frame (by its file offset) was decoded; each decode is slow."""
    counts: Counter[int] = Counter()
    real = seekable._decode_frame

    def counting(frame: bytes, expected: int, where: int) -> bytes:
        counts[where] += 1
        time.sleep(0.02)  # long enough for the other threads to ask for the same frame
        return real(frame, expected, where)

    monkeypatch.setattr(seekable, "_decode_frame", counting)
    return counts


def test_threads_asking_for_one_frame_decode_it_once(decodes: Counter[int]) -> None:
    reader = _reader(cache_frames=4)
    got: list[bytes] = []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        got.append(reader.pread(FRAME + 100, 5000))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [DATA[FRAME + 100 : FRAME + 5100]] * 8
    assert list(decodes.values()) == [1]


def test_a_hit_does_not_wait_for_a_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache lock is not held while a frame decodes."""
    real = seekable._decode_frame
    decoding = threading.Event()

    def slow(frame: bytes, expected: int, where: int) -> bytes:
        if where > 0:
            decoding.set()
            time.sleep(0.5)
        return real(frame, expected, where)

    monkeypatch.setattr(seekable, "_decode_frame", slow)
    reader = _reader(cache_frames=4)
    reader.pread(0, 10)  # frame 0 cached
    slow_read = threading.Thread(target=reader.pread, args=(5 * FRAME, 10))
    slow_read.start()
    assert decoding.wait(5)
    t = time.perf_counter()
    assert reader.pread(10, 10) == DATA[10:20]
    assert time.perf_counter() - t < 0.25
    slow_read.join()


def test_sequential_reads_decode_ahead_each_frame_once(decodes: Counter[int]) -> None:
    reader = _reader(cache_frames=6, prefetch=2)
    pos, out = 0, []
    while pos < len(DATA):
        out.append(reader.pread(pos, 7000))
        pos += 7000
    assert b"".join(out) == DATA
    assert len(decodes) == reader.table.frames and set(decodes.values()) == {1}
    reader.close()
    assert reader.pread(3 * FRAME, 100) == DATA[3 * FRAME : 3 * FRAME + 100]  # still reads


def test_random_reads_do_not_decode_ahead(decodes: Counter[int]) -> None:
    reader = _reader(cache_frames=30, prefetch=2)
    for i in (40, 2, 25, 9):  # never just after the read before (1 MiB or more apart)
        reader.pread(i * FRAME + 10, 100)
    assert len(decodes) == 4
    reader.close()


def test_the_cache_keeps_to_its_byte_budget() -> None:
    reader = _reader(cache_frames=100, cache_bytes=3 * FRAME)
    assert reader.pread(0, len(DATA)) == DATA
    assert len(reader._cache) == 3 and reader._cached <= 3 * FRAME


def test_a_damaged_frame_fails_each_read_and_only_its_own() -> None:
    f = io.BytesIO(BLOB)
    table = SeekTable.read_from(f)
    assert table is not None
    bad = bytearray(BLOB)
    where = table.c_offsets[4] + table.compressed[4] // 2
    bad[where : where + 32] = bytes(b ^ 0xFF for b in bad[where : where + 32])
    reader = _reader(bytes(bad), cache_frames=8, prefetch=2)
    pos = 0
    while pos + 8000 <= 4 * FRAME:  # reading up to it decodes it ahead: that fails silently
        assert reader.pread(pos, 8000) == DATA[pos : pos + 8000]
        pos += 8000
    for _ in range(2):
        with pytest.raises(ImageDamagedError):
            reader.pread(4 * FRAME + 10, 100)
    assert reader.pread(5 * FRAME, 100) == DATA[5 * FRAME : 5 * FRAME + 100]
    reader.close()


def test_a_failed_decode_fails_the_threads_waiting_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def damaged(frame: bytes, expected: int, where: int) -> bytes:
        time.sleep(0.02)
        raise ImageDamagedError(f"Damaged zstd frame at byte {where}.", offset=where)

    monkeypatch.setattr(seekable, "_decode_frame", damaged)
    reader = _reader(cache_frames=4)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            reader.pread(0, 10)
        except ImageDamagedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and all("Damaged zstd frame" in e.message for e in errors)
    assert not reader._decoding


def test_zstd_errors_still_name_the_frame() -> None:
    bad = zstandard.ZstdCompressor().compress(b"a" * 1000)
    with pytest.raises(ImageDamagedError, match="at byte 7"):
        seekable._decode_frame(bad[:-3], 1000, 7)


def test_volumes_read_at_an_offset_from_threads(tmp_path: Path) -> None:
    """The cache reads compressed frames with ``pread`` (no shared position, no lock),
    across split volumes, and asks the kernel to read the next ones ahead."""
    data = random.Random(2).randbytes(300_000)
    paths = []
    for k, (a, b) in enumerate([(0, 100_000), (100_000, 100_001), (100_001, 300_000)]):
        p = tmp_path / f"v{k}"
        p.write_bytes(data[a:b])
        paths.append(p)
    with VolumeReader(paths) as v:
        v.seek(123)
        spans = [(0, 10), (99_990, 20), (100_000, 5), (99_999, 200_001), (299_990, 100)]
        got: dict[tuple[int, int], bytes] = {}

        def one(span: tuple[int, int]) -> None:
            got[span] = bytes(v.pread(*span))

        threads = [threading.Thread(target=one, args=(s,)) for s in spans * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(got[(a, n)] == data[a : a + n] for a, n in spans)
        assert v.pread(300_000, 10) == b""
        assert v.tell() == 123  # the position of sequential readers is left alone
        v.willneed(50_000, 200_000)
