"""Hostile image folders: streams built to exhaust memory or to hang a reader.

Each case is an image folder made by a real capture, then altered the way a
damaged disk or an attacker could alter it. The real commands run on it in a
child process with a time bound and an address-space limit; each must refuse
it in words that name the file (exit 1 or 2, no traceback) within the time,
its peak resident memory (``ru_maxrss`` from ``wait4``) under 256 MiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from bounded import TIMEOUT, Outcome, run_limited
from capabilities import need
from diskbench import clonezilla_copy, make_disk, run

from rescue.browse import mounts
from rescue.cli import main
from rescue.errors import ImageDamagedError
from rescue.image.names import INDEX_DIR
from rescue.image.partclone import HEADER_SIZE, PartcloneHeader
from rescue.image.seekable import SeekTable, seek_table_bytes
from rescue.image.streams import check_stream
from rescue.image.view import ImagePart, open_image
from rescue.image.volumes import VolumeReader, volume_paths
from rescue.imagedev import index
from rescue.imagedev.spec import ServerSpec
from rescue.progress import NullProgress

pytestmark = need("root", "loop", "fuse")

MiB = 1 << 20
GiB = 1 << 30
RSS_LIMIT = 256 * MiB

ZSTD_MAGIC = 0xFD2FB528
BLOCK_MAX = 128 * 1024


PRECHECK = """
import sys
from pathlib import Path
from rescue.errors import RescueError
from rescue.image.streams import check_stream
from rescue.image.view import open_image
try:
    image = open_image(Path(sys.argv[1]))
    for part in image.parts:
        if part.stream is not None and part.stored_as == "partclone":
            check_stream(part.stream, part.compression, partition_size=part.size or None,
                         expect_fstype=part.fstype)
except RescueError as exc:
    print(f"rescue: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


# --- the image every case starts from -------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real capture of a small ext4 partition holding files."""
    d = tmp_path_factory.mktemp("hostile")
    tree = d / "tree"
    tree.mkdir()
    rng = random.Random(14)
    for i in range(30):
        (tree / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 200_000)))
    part = d / "part.img"
    with part.open("wb") as f:
        f.truncate(48 * MiB)
    run("mkfs.ext4", "-q", "-b", "4096", "-d", str(tree), str(part))
    image = d / "image"
    assert main(["capture", str(part), str(image)]) == 0
    return image


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The children's environment: mount records and index caches of this test only."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("RESCUE_RUN_DIR", str(run_dir))
    monkeypatch.setenv("RESCUE_CACHE_DIR", str(tmp_path / "cache"))
    yield dict(os.environ)
    if mounts.records():  # a case that was (wrongly) mounted must not stay mounted
        mounts.unmount_all()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, udev: None) -> Iterator[Path]:
    """A restore target, a disk the size of the partition (shared: each restore rewrites it)."""
    disk = make_disk(tmp_path_factory.mktemp("target") / "target.img", 64, None, [])
    yield Path(disk.path)
    disk.detach()


def rescue_image(made: Path, dest: Path) -> Path:
    shutil.copytree(made, dest, symlinks=True)
    return dest


def clonezilla_image(made: Path, dest: Path) -> Path:
    clonezilla_copy(made, dest, "zstd -q -T0 -3")
    return dest


def stream_of(image: Path) -> Path:
    (stream,) = [p for p in image.iterdir() if "-ptcl-img." in p.name]
    return stream


def record_stream(image: Path, stream: Path, *, name: str | None = None) -> None:
    """Make rescue.json (if any) describe ``stream`` as the partition's stream file,
    as a hostile folder's manifest would."""
    manifest = image / "rescue.json"
    if not manifest.exists():
        return
    doc = json.loads(manifest.read_text())
    (part,) = doc["partitions"]
    data = stream.read_bytes() if stream.is_file() else b""
    listed = name or stream.name
    part["stream"] = listed
    part["files"] = [
        {"name": listed, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    manifest.write_text(json.dumps(doc, indent=2))


def replace_stream(image: Path, data: bytes) -> Path:
    stream = stream_of(image)
    stream.write_bytes(data)
    record_stream(image, stream)
    return stream


# --- hostile streams ------------------------------------------------------------------------


def zero_frame(size: int, *, declare: bool, prefix: bytes = b"", window_log: int = 21) -> bytes:
    """A zstd frame of ``prefix`` then zeros up to ``size`` bytes, in RLE blocks: about
    4 bytes of file per 128 KiB of output. With ``declare`` its header records ``size``."""
    fhd = 0xC0 if declare else 0x00  # 8-byte content size (or none), not single segment
    out = bytearray(struct.pack("<IBB", ZSTD_MAGIC, fhd, (window_log - 10) << 3))
    if declare:
        out += struct.pack("<Q", size)
    left = size
    if prefix:
        out += (len(prefix) << 3).to_bytes(3, "little") + prefix  # one raw block
        left -= len(prefix)
    while left > 0:
        n = min(BLOCK_MAX, left)
        left -= n
        out += ((n << 3) | (1 << 1) | int(left == 0)).to_bytes(3, "little") + b"\0"
    return bytes(out)


def seekable(frames: list[tuple[bytes, int]]) -> bytes:
    """A seekable zstd file of ``frames`` (frame, decompressed size the table gives it).
    The table's checksum of each frame is its last four bytes, as rescue's writer does."""
    entries = [(len(f), d, struct.unpack_from("<I", f, len(f) - 4)[0]) for f, d in frames]
    return b"".join(f for f, _ in frames) + seek_table_bytes(entries)


def huge_header() -> bytes:
    """A partclone header with a valid CRC that claims 2^60 blocks of 4 KiB."""
    return PartcloneHeader(
        fs="EXTFS",
        device_size=(1 << 64) - 4096,
        total_blocks=1 << 60,
        used_blocks_sb=0,
        used_blocks=0,
        block_size=4096,
    ).pack()


def _zero_frames(total: int, first: bytes) -> list[tuple[bytes, int]]:
    """4 MiB frames holding ``first`` then zeros up to ``total`` bytes."""
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    head = first + b"\0" * (4 * MiB - len(first))
    frames = [(cctx.compress(head), len(head))]
    zeros = cctx.compress(b"\0" * (4 * MiB))
    frames += [(zeros, 4 * MiB)] * (total // (4 * MiB) - 1)
    return frames


def case_bomb_declared(image: Path) -> Path:
    """The first frame's header records 8 GiB; the seek table says 4 MiB."""
    return replace_stream(image, seekable([(zero_frame(8 * GiB, declare=True), 4 * MiB)]))


def case_bomb_undeclared(image: Path) -> Path:
    """The first frame records no size and decodes to 8 GiB; the seek table says 4 MiB."""
    return replace_stream(image, seekable([(zero_frame(8 * GiB, declare=False), 4 * MiB)]))


def case_bomb_single_frame(image: Path) -> Path:
    """One long frame (as Clonezilla writes): the stream's real header, then 8 GiB of zeros
    (the bitmap and the blocks)."""
    stream = stream_of(image)
    with zstandard.ZstdDecompressor().stream_reader(stream.open("rb")) as r:
        head = r.read(HEADER_SIZE)
    return replace_stream(image, zero_frame(8 * GiB, declare=False, prefix=head))


def case_bomb_large_window(image: Path) -> Path:
    """One long frame asking for the largest window zstd decodes by default (128 MiB)."""
    return replace_stream(image, zero_frame(8 * GiB, declare=False, window_log=27))


def case_window_too_large(image: Path) -> Path:
    """One long frame, the stream's real header first, asking for a 2 GiB window."""
    stream = stream_of(image)
    with zstandard.ZstdDecompressor().stream_reader(stream.open("rb")) as r:
        head = r.read(HEADER_SIZE)
    return replace_stream(image, zero_frame(8 * GiB, declare=False, prefix=head, window_log=31))


def case_huge_header(image: Path) -> Path:
    """Seekable frames of 1 GiB: a header claiming 2^60 blocks, then zeros."""
    return replace_stream(image, seekable(_zero_frames(GiB, huge_header())))


def case_huge_header_single_frame(image: Path) -> Path:
    """One long frame of 1 GiB: a header claiming 2^60 blocks, then zeros."""
    cctx = zstandard.ZstdCompressor(level=1)
    chunks = cctx.chunker(chunk_size=1 * MiB)
    out = list(chunks.compress(huge_header()))
    zeros = b"\0" * (4 * MiB)
    for _ in range(GiB // len(zeros)):
        out += chunks.compress(zeros)
    out += chunks.finish()
    return replace_stream(image, b"".join(out))


def case_ten_million_frames(image: Path) -> Path:
    """The stream's frames, then a seek table of ten million entries (120 MB)."""
    stream = stream_of(image)
    data = stream.read_bytes()
    (count,) = struct.unpack_from("<I", data, len(data) - 9)
    frames_end = len(data) - (8 + count * 12 + 9)
    n = 10_000_000
    body = bytes(12 * n)
    footer = struct.pack("<IBI", n, 0x80, 0x8F92EAB1)
    table = struct.pack("<II", 0x184D2A5E, len(body) + len(footer)) + body + footer
    return replace_stream(image, data[:frames_end] + table)


def case_fifo(image: Path) -> Path:
    stream = stream_of(image)
    stream.unlink()
    os.mkfifo(stream)
    record_stream(image, stream)
    return stream


def case_symlink(image: Path) -> Path:
    """The stream is a symbolic link to a (good) copy of it outside the folder."""
    stream = stream_of(image)
    outside = image.parent / "elsewhere"
    outside.mkdir()
    shutil.move(stream, outside / stream.name)
    stream.symlink_to(outside / stream.name)
    return stream


def case_absolute_path(image: Path) -> Path:
    """rescue.json names the stream by an absolute path outside the folder."""
    stream = stream_of(image)
    outside = image.parent / "elsewhere"
    outside.mkdir()
    moved = outside / stream.name
    shutil.move(stream, moved)
    record_stream(image, moved, name=str(moved))
    return moved


Case = Callable[[Path], Path]
RESCUE_CASES: dict[str, Case] = {
    "bomb-declared": case_bomb_declared,
    "bomb-undeclared": case_bomb_undeclared,
    "huge-header": case_huge_header,
    "ten-million-frames": case_ten_million_frames,
    "fifo": case_fifo,
    "symlink": case_symlink,
    "absolute-path": case_absolute_path,
}
CLONEZILLA_CASES: dict[str, Case] = {
    "bomb-single-frame": case_bomb_single_frame,
    "bomb-large-window": case_bomb_large_window,
    "window-too-large": case_window_too_large,
    "huge-header-single-frame": case_huge_header_single_frame,
    "huge-header": case_huge_header,
    "fifo": case_fifo,
    "symlink": case_symlink,
}


def commands(image: Path, target: Path, mnt: Path) -> dict[str, list[str]]:
    py = [sys.executable]
    return {
        "verify": [*py, "-m", "rescue", "verify", str(image)],
        "info": [*py, "-m", "rescue", "info", str(image)],
        "precheck": [*py, "-c", PRECHECK, str(image)],
        "restore": [*py, "-m", "rescue", "restore", str(image), str(target), "--yes"],
        "mount": [*py, "-m", "rescue", "mount", str(image), str(mnt)],
    }


def assert_refused(what: str, res: Outcome, name: str, *, may_pass: bool = False) -> None:
    where = f"{what}: exit {res.code} in {res.seconds:.1f} s, {res.max_rss / MiB:.0f} MiB\n"
    where += f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-2000:]}"
    assert not res.timed_out, where
    assert res.seconds < TIMEOUT, where
    assert res.max_rss < RSS_LIMIT, where
    assert "Traceback" not in res.stderr, where
    if may_pass and res.code == 0:
        return
    assert res.code in (1, 2), where
    # restore says first what it will overwrite; the error is the line rescue: starts
    said = [line for line in res.stderr.splitlines() if line.startswith("rescue: ")]
    assert len(said) == 1, where
    assert name in said[0], where


def _run_case(kind: str, case: Case, made: Path, tmp_path: Path, env: dict[str, str],
              target: Path) -> None:  # fmt: skip
    image = (rescue_image if kind == "rescue" else clonezilla_image)(made, tmp_path / "image")
    stream = case(image)
    name = stream.name
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for what, argv in commands(image, target, mnt).items():
        res = run_limited(argv, env)
        # info reads no stream of an image that records its partition sizes
        assert_refused(f"{kind} {what}", res, name, may_pass=what == "info")
    assert not os.path.ismount(mnt)
    index = image / ".rescue-index"
    assert not index.exists() or not any(index.iterdir())


@pytest.mark.parametrize("case", list(RESCUE_CASES))
def test_hostile_stream_in_a_rescue_image(
    case: str, made: Path, tmp_path: Path, env: dict[str, str], target: Path
) -> None:
    _run_case("rescue", RESCUE_CASES[case], made, tmp_path, env, target)


@pytest.mark.parametrize("case", list(CLONEZILLA_CASES))
def test_hostile_stream_in_a_clonezilla_image(
    case: str, made: Path, tmp_path: Path, env: dict[str, str], target: Path
) -> None:
    _run_case("clonezilla", CLONEZILLA_CASES[case], made, tmp_path, env, target)


def test_the_untouched_image_passes_under_the_same_limits(
    made: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """The limits are not what refuses the cases: the good image verifies within them."""
    for kind in ("rescue", "clonezilla"):
        image = (rescue_image if kind == "rescue" else clonezilla_image)(made, tmp_path / kind)
        for argv in (
            [sys.executable, "-m", "rescue", "verify", str(image)],
            [sys.executable, "-c", PRECHECK, str(image)],
        ):
            res = run_limited(argv, env)
            assert res.code == 0, (kind, argv[1:3], res)
            assert res.max_rss < RSS_LIMIT, (kind, res.max_rss)


def test_a_fifo_is_refused_at_once(made: Path, tmp_path: Path) -> None:
    """No reader waits on a FIFO: the error comes within a second, in-process too."""
    image = clonezilla_image(made, tmp_path / "image")
    stream = case_fifo(image)
    raised: list[BaseException] = []

    def open_it() -> None:
        try:
            VolumeReader(volume_paths(stream)).close()
        except BaseException as exc:  # looked at below
            raised.append(exc)

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    opener.join(1)
    if opener.is_alive():  # it waits for a writer: be one, so this test ends
        os.close(os.open(stream, os.O_WRONLY | os.O_NONBLOCK))
        opener.join(5)
        pytest.fail(f"opening {stream.name} waited on the FIFO")
    assert len(raised) == 1 and isinstance(raised[0], ImageDamagedError), raised
    assert "FIFO" in raised[0].message and stream.name in raised[0].message


# --- mount's index: inside the image folder or in rescue's cache, never through a link ----


def _clonezilla_part(made: Path, tmp_path: Path) -> tuple[Path, ImagePart]:
    image = clonezilla_image(made, tmp_path / "image")
    (part,) = open_image(image).parts
    return image, part


def test_an_index_folder_that_is_a_link_is_not_used(
    made: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    image, part = _clonezilla_part(made, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (image / INDEX_DIR).symlink_to(outside)
    _kind, path = index.build_index(part, NullProgress())
    assert not any(outside.iterdir())
    assert path.is_relative_to(tmp_path / "cache")
    assert index.find_index(part.stream) == (_kind, path)  # type: ignore[arg-type]


def test_index_files_are_never_written_through_links(
    made: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    image, part = _clonezilla_part(made, tmp_path)
    assert part.stream is not None
    folder = image / INDEX_DIR
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    name = part.stream.name
    for planted in (f"{name}.seekable.zst.tmp", f"{name}.index.tmp", f".write-test-{os.getpid()}"):
        (folder / planted).symlink_to(victim)
    kind, path = index.build_index(part, NullProgress())
    assert victim.read_bytes() == b"precious"
    assert (kind, path) == ("copy", folder / f"{name}.seekable.zst")
    assert not path.is_symlink()


def test_a_forged_index_record_is_not_followed(
    made: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    _image, part = _clonezilla_part(made, tmp_path)
    assert part.stream is not None
    kind, path = index.build_index(part, NullProgress())
    assert index.find_index(part.stream) == (kind, path)
    record = path.parent / f"{part.stream.name}.index.json"
    doc = json.loads(record.read_text())
    outside = tmp_path / "outside.zst"
    shutil.copy(path, outside)
    for forged in ({**doc, "file": "../../outside.zst"}, {**doc, "file": str(outside)}):
        record.write_text(json.dumps(forged))
        assert index.find_index(part.stream) is None
    record.write_text(json.dumps(doc))
    path.unlink()
    path.symlink_to(outside)  # the right name, but a link out of the folder
    assert index.find_index(part.stream) is None
    record.write_text("[" * 200_000)  # a record too large (and no JSON)
    assert index.find_index(part.stream) is None


def test_a_damaged_index_table_is_refused(made: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """A .seektable index claiming more frames than the stream holds is refused in words."""
    _image, part = _clonezilla_part(made, tmp_path)
    assert part.stream is not None
    table = tmp_path / "bad.seektable"
    table.write_bytes(SeekTable.build([1 << 20] * 64, [4 * MiB] * 64, None).to_bytes())
    spec = ServerSpec(stream=part.stream, raw=False, size=part.size, table=table)
    with pytest.raises(ImageDamagedError, match="delete it"):
        index.open_reader(spec)


def test_check_stream_takes_good_streams_of_every_kind(made: Path, tmp_path: Path) -> None:
    """Split, gzip and single-frame streams pass; the wrong filesystem or size does not."""
    split = tmp_path / "split"
    assert main(["capture", str(made.parent / "part.img"), str(split), "--split", "1M"]) == 0
    gz = tmp_path / "gz"
    clonezilla_copy(made, gz, "gzip -1")
    images = [made, split, clonezilla_image(made, tmp_path / "cz"), gz]
    for image in images:
        (part,) = open_image(image).parts
        assert part.stream is not None
        header = check_stream(
            part.stream, part.compression, partition_size=part.size, expect_fstype=part.fstype
        )
        assert header.fs == "EXTFS" and header.device_size == 48 * MiB
    assert len(volume_paths(split / stream_of(made).name)) > 2
    (part,) = open_image(made).parts
    assert part.stream is not None
    with pytest.raises(ImageDamagedError, match="not of the ntfs filesystem"):
        check_stream(part.stream, "zst", partition_size=None, expect_fstype="ntfs")
    with pytest.raises(ImageDamagedError, match="larger than its"):
        check_stream(part.stream, "zst", partition_size=part.size - 4096)


def test_the_measure_sees_the_command_and_only_it(tmp_path: Path) -> None:
    """Peak RSS is the command's own, however large this process is, and a large one shows."""
    ballast = bytearray(300 * MiB)  # pytest grown large: not counted in the command's peak
    ballast[::4096] = b"\1" * len(ballast[::4096])
    env = dict(os.environ)
    small = run_limited([sys.executable, "-c", "pass"], env)
    big = run_limited(
        [sys.executable, "-c", "b = bytearray(300 << 20); b[::4096] = b'1' * len(b[::4096])"], env
    )
    del ballast
    assert small.code == 0 and small.max_rss < 64 * MiB, small
    assert big.code == 0 and big.max_rss > 300 * MiB, big
