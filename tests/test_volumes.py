"""Split volumes: names, sizes, hashes, and the reader over them."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from rescue.errors import BadInputError, ImageDamagedError
from rescue.image.volumes import VolumeReader, VolumeWriter, split_suffix, volume_paths


def _write(base: Path, data: bytes, split: int | None, *, direct: bool = True) -> VolumeWriter:
    w = VolumeWriter(base, split, direct=direct)
    rng = random.Random(len(data))
    pos = 0
    while pos < len(data):
        step = rng.randrange(1, 3_000_000)
        w.write(data[pos : pos + step])
        pos += step
    w.close()
    return w


@pytest.mark.parametrize("split", [None, 7, 4095, 40960, 1 << 20, (9 << 20) + 7])
@pytest.mark.parametrize("direct", [True, False])
def test_split_round_trip(tmp_path: Path, split: int | None, direct: bool) -> None:
    data = os.urandom(min((20 << 20) + 12345, 600 * (split or 1 << 30)))
    w = _write(tmp_path / "s.zst", data, split, direct=direct)
    paths = volume_paths(tmp_path / "s.zst")
    assert [p for p, _, _ in w.files] == paths
    for path, size, digest in w.files:
        content = path.read_bytes()
        assert len(content) == size
        assert hashlib.sha256(content).hexdigest() == digest
    if split is not None:
        assert all(size == split for _, size, _ in w.files[:-1])
        assert paths[0].name == "s.zst.aa"
    else:
        assert paths == [tmp_path / "s.zst"]
    r = VolumeReader(paths)
    assert r.read() == data
    r.seek(len(data) // 3)
    assert r.read(1000) == data[len(data) // 3 : len(data) // 3 + 1000]
    r.close()


def test_gap_in_volumes_is_reported(tmp_path: Path) -> None:
    _write(tmp_path / "s.zst", os.urandom(10_000), 3000)
    (tmp_path / "s.zst.ab").unlink()
    with pytest.raises(ImageDamagedError, match=r"s\.zst\.ab"):
        volume_paths(tmp_path / "s.zst")


def test_missing_stream(tmp_path: Path) -> None:
    with pytest.raises(ImageDamagedError, match="missing"):
        volume_paths(tmp_path / "nothing.zst")


def test_too_many_volumes_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="676"):
        _write(tmp_path / "s.zst", os.urandom(700), 1)


def test_suffixes_follow_split() -> None:
    assert [split_suffix(i) for i in (0, 1, 25, 26, 675)] == ["aa", "ab", "az", "ba", "zz"]
    with pytest.raises(ValueError):
        split_suffix(676)
