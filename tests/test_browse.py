"""Browsing images: read-only mounts of every filesystem, extraction, clean teardown."""

from __future__ import annotations

import bisect
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import (
    LoopDisk,
    PartSpec,
    clonezilla_copy,
    fill_tree,
    run,
    tree_digest,
    without_links,
)

from rescue.browse import mounts
from rescue.browse.session import BrowseSession
from rescue.cli import main
from rescue.errors import BadInputError
from rescue.image.partclone import block_offset
from rescue.image.random_access import PartitionReader
from rescue.image.seekable import SeekTable

pytestmark = need("root", "loop", "fuse")


@pytest.fixture(autouse=True)
def private_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Mount records and index caches of this test only; all of them gone at the end."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("RESCUE_RUN_DIR", str(run_dir))
    monkeypatch.setenv("RESCUE_CACHE_DIR", str(tmp_path / "cache"))
    yield run_dir
    if mounts.records():  # a failed test must not leave mounts for the next one
        mounts.unmount_all()


def leftovers(run_dir: Path, server_pids: list[int]) -> list[str]:
    """Everything of a browse mount that still exists."""
    found = []
    if run_dir.exists() and any(run_dir.iterdir()):
        found.append(f"state: {sorted(p.name for p in run_dir.iterdir())}")
    table = Path("/proc/self/mountinfo").read_text()
    # only this test's run folder: other runs on the machine may have mounts of their own
    if str(run_dir) in table:
        found.append("a FUSE mount")
    loops = run("losetup", "-a")
    if str(run_dir) in loops:
        found.append(f"a loop device: {loops}")
    for pid in server_pids:
        if Path(f"/proc/{pid}").exists() and "rescue.imagedev.server" in Path(
            f"/proc/{pid}/cmdline"
        ).read_text(errors="replace"):
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            if state != "Z":
                found.append(f"server process {pid}")
    return found


def source_with_files(
    factory: DiskFactory, tmp_path: Path, fs: str, size_mib: int = 320
) -> tuple[LoopDisk, dict[str, str]]:
    """A whole-device filesystem filled with files, and the digest of its tree."""
    disk = factory(size_mib, None, [PartSpec(None, fs, label="SRC")])
    disk.parts = [disk.path]
    mnt = tmp_path / "src-mnt"
    if fs == "vfat":  # no vfat in this kernel: fill with mtools, read back with fusefat
        tree = tmp_path / "tree"
        tree.mkdir()
        fill_tree(tree, seed=5, approx_mib=6)
        run("mcopy", "-s", "-m", "-i", disk.path, *[str(p) for p in tree.iterdir()], "::/")
        mnt.mkdir()
        run("fusefat", "-o", "ro", disk.path, str(mnt))
        digest = tree_digest(mnt)
        run("umount", str(mnt))
    else:
        disk.mount(0, mnt)
        fill_tree(mnt, seed=5, approx_mib=6)
        (mnt / "gone.bin").write_bytes(os.urandom(2 << 20))  # deleted-file garbage
        os.sync()
        (mnt / "gone.bin").unlink()
        digest = tree_digest(mnt)
        disk.umount(mnt)
    return disk, digest


def capture(source: str, image: Path) -> None:
    assert main(["capture", source, str(image)]) == 0


def server_pid(run_dir: Path) -> int:
    (state,) = run_dir.iterdir()
    pid = json.loads((state / "mount.json").read_text())["server_pid"]
    assert isinstance(pid, int)
    return pid


@pytest.mark.parametrize("fs", ["ext4", "ntfs", "xfs", "btrfs", "vfat", "exfat"])
def test_mount_shows_every_file_read_only(
    loop_disk_factory: DiskFactory, tmp_path: Path, private_run_dir: Path, fs: str
) -> None:
    disk, digest = source_with_files(loop_disk_factory, tmp_path, fs)
    image = tmp_path / "image"
    capture(disk.path, image)
    disk.detach()  # the image alone, as on the technician's bench
    mnt = tmp_path / "browse"
    started = time.monotonic()
    assert main(["mount", str(image), str(mnt)]) == 0
    mount_seconds = time.monotonic() - started
    pid = server_pid(private_run_dir)
    try:
        assert tree_digest(mnt) == digest
        with pytest.raises(OSError) as caught:
            (mnt / "new-file").write_bytes(b"x")
        assert caught.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        with pytest.raises(OSError):
            (mnt / "big.dat").unlink()
        entry = next(
            line
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f" {mnt} " in line
        )
        assert " ro," in entry or " ro " in entry, entry
    finally:
        assert main(["unmount", str(mnt)]) == 0
    assert leftovers(private_run_dir, [pid]) == []
    assert mnt.is_dir() and not any(mnt.iterdir())
    print(f"{fs}: mounted in {mount_seconds:.2f} s")


@pytest.fixture
def ext4_image(loop_disk_factory: DiskFactory, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    disk = loop_disk_factory(200, None, [PartSpec(None, "ext4")])
    mnt = tmp_path / "src"
    disk.parts = [disk.path]
    disk.mount(0, mnt)
    fill_tree(mnt, seed=9, approx_mib=12)
    os.symlink("/etc", mnt / "abs-link")  # means the image's /etc, never the host's
    os.symlink("../../../../../../../../tmp", mnt / "climbing-link")
    (mnt / "etc").mkdir()
    (mnt / "etc" / "hostname").write_text("imaged-machine\n")
    os.mkfifo(mnt / "a-fifo")
    digest = tree_digest(mnt)
    disk.umount(mnt)
    image = tmp_path / "image"
    capture(disk.path, image)
    return image, digest


def test_extract_keeps_modes_times_and_symlinks(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path, private_run_dir: Path
) -> None:
    image, digest = ext4_image
    out = tmp_path / "out"
    assert main(["extract", str(image), "docs", "/bin/", "big.dat", "--to", str(out)]) == 0
    got = without_links(tree_digest(out))
    want = {
        k: v
        for k, v in without_links(digest).items()
        if k.split("/")[0] in ("docs", "bin", "big.dat")
    }
    assert got == want
    assert (out / "docs" / "link-to-big").is_symlink()
    assert leftovers(private_run_dir, []) == []


def test_extract_never_writes_outside_the_destination(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path, private_run_dir: Path
) -> None:
    image, _ = ext4_image
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    # a symlink planted in the destination where a folder of the image will go
    os.symlink(outside, out / "docs")
    assert main(["extract", str(image), "docs", "--to", str(out)]) == 1
    assert list(outside.iterdir()) == []
    # symlinks of the image resolve inside the image: /etc is the image's /etc
    with BrowseSession(image) as session:
        assert session.read_file("/abs-link/hostname") == b"imaged-machine\n"
        assert session.read_file("../../etc/hostname") == b"imaged-machine\n"
        with pytest.raises(BadInputError):
            session.read_file("climbing-link/passwd")  # the image's /tmp, which is empty
        names = [e.name for e in session.list_dir("/")]
        assert "docs" in names and "etc" in names
        assert session.stat("climbing-link").kind == "symlink"
        res = session.extract(["climbing-link", "abs-link", "a-fifo"], tmp_path / "links")
    # the links themselves are copied, never followed
    assert os.readlink(tmp_path / "links" / "abs-link") == "/etc"
    assert res.symlinks == 2 and res.skipped == ["/a-fifo"] and res.ok
    assert leftovers(private_run_dir, []) == []


def test_refusals(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path, private_run_dir: Path
) -> None:
    image, _ = ext4_image
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["mount", str(image), str(full)]) == 2
    assert main(["mount", str(tmp_path / "no-such-image"), str(tmp_path / "m")]) == 2
    assert main(["mount", str(image), str(tmp_path / "m"), "--partition", "7"]) == 2
    assert main(["unmount", str(tmp_path / "m")]) == 2
    assert main(["extract", str(image), "no/such/file", "--to", str(tmp_path / "o")]) == 2
    assert (full / "keep.txt").read_text() == "mine"
    assert leftovers(private_run_dir, []) == []


def test_killed_server_then_unmount_leaves_nothing(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path, private_run_dir: Path
) -> None:
    image, _ = ext4_image
    mnt = tmp_path / "m"
    assert main(["mount", str(image), str(mnt)]) == 0
    pid = server_pid(private_run_dir)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(OSError):
        (mnt / "big.dat").read_bytes()
    assert main(["unmount", str(mnt)]) == 0
    assert leftovers(private_run_dir, [pid]) == []


def test_killed_mounting_command_is_swept(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path, private_run_dir: Path
) -> None:
    """The mounting command dies after the server and loop exist, before the mount."""
    image, _ = ext4_image
    mnt = tmp_path / "m"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from rescue.browse import mounts\n"
        "def hang(*a):\n"
        "    print('hanging', flush=True)\n"
        "    time.sleep(600)\n"
        "mounts._mount_fs = hang\n"
        "mounts.mount_image(Path(sys.argv[1]), Path(sys.argv[2]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(image), str(mnt)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "hanging"
        pid = server_pid(private_run_dir)
        assert str(private_run_dir) in run("losetup", "-a")
    finally:
        proc.kill()
        proc.wait()
    assert main(["unmount", "--all"]) == 0
    assert leftovers(private_run_dir, [pid]) == []


def test_damaged_frame_fails_only_its_file(
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    private_run_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = loop_disk_factory(200, None, [PartSpec(None, "ext4")])
    disk.parts = [disk.path]
    mnt = tmp_path / "src"
    disk.mount(0, mnt)
    (mnt / "good").mkdir()
    fill_tree(mnt / "good", seed=3, approx_mib=4)
    (mnt / "victim.bin").write_bytes(os.urandom(24 << 20))
    digest = tree_digest(mnt / "good")
    disk.umount(mnt)
    blocks = [int(b) for b in run("debugfs", "-R", "blocks /victim.bin", disk.path).split()]
    image = tmp_path / "image"
    capture(disk.path, image)
    disk.detach()
    (stream,) = image.glob("*.ext4-ptcl-img.zst")
    reader = PartitionReader(stream)
    middle = blocks[len(blocks) // 2]
    offset = block_offset(reader.header, reader._rank(middle))
    with stream.open("rb") as f:
        table = SeekTable.read_from(f)
    reader.close()
    assert table is not None
    frame = bisect.bisect_right(table.d_offsets, offset) - 1
    where = table.c_offsets[frame] + table.compressed[frame] // 2
    with stream.open("r+b") as f:  # flip bytes in the middle of that frame
        f.seek(where)
        data = f.read(64)
        f.seek(where)
        f.write(bytes(b ^ 0xFF for b in data))

    mnt = tmp_path / "browse"
    assert main(["mount", str(image), str(mnt)]) == 0
    try:
        with pytest.raises(OSError) as caught:
            (mnt / "victim.bin").read_bytes()
        assert caught.value.errno == errno.EIO
        assert tree_digest(mnt / "good") == digest  # every other file intact
        (state,) = private_run_dir.iterdir()
        log = (state / "server.log").read_text()
        assert "read error in partition bytes" in log and "Damaged zstd frame" in log
    finally:
        assert main(["unmount", str(mnt)]) == 0
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["extract", str(image), "/", "--to", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "/victim.bin" in printed and "damaged" in printed
    assert not (out / "victim.bin").exists()  # never a partial file that looks whole
    assert tree_digest(out / "good").keys() == digest.keys()
    assert main(["verify", str(image)]) == 1
    assert stream.name in capsys.readouterr().err


@pytest.mark.parametrize("compress", ["zstd -q -T0 -3", "gzip -1"])
def test_clonezilla_stream_is_indexed_once(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path, compress: str
) -> None:
    image, digest = ext4_image
    cz = tmp_path / "cz"
    stream = clonezilla_copy(image, cz, compress)
    with BrowseSession(cz) as session:
        assert tree_digest(session.root) == digest
    (index,) = (cz / ".rescue-index").glob("*.seekable.zst")
    built = index.stat().st_mtime_ns
    with BrowseSession(cz) as session:  # the second time the index is reused
        assert session.read_file("etc/hostname") == b"imaged-machine\n"
    assert index.stat().st_mtime_ns == built
    os.utime(stream)  # a changed stream invalidates its index
    with BrowseSession(cz) as session:
        assert session.read_file("etc/hostname") == b"imaged-machine\n"
    assert index.stat().st_mtime_ns != built


def test_index_of_a_read_only_image_goes_to_the_cache(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    image, digest = ext4_image
    cz = tmp_path / "cz"
    clonezilla_copy(image, cz, "zstd -q -T0 -3")
    ro = tmp_path / "ro"
    ro.mkdir()
    run("mount", "--bind", str(cz), str(ro))
    try:
        run("mount", "-o", "remount,bind,ro", str(ro))
        with BrowseSession(ro) as session:
            assert tree_digest(session.root) == digest
        assert not (cz / ".rescue-index").exists()
        assert list((tmp_path / "cache").glob("*/*.seekable.zst"))
    finally:
        run("umount", str(ro))


def test_stream_without_seek_table_gets_a_table_index(
    ext4_image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Many small frames but the seek table lost: the frames' own headers are the index."""
    image, digest = ext4_image
    (stream,) = image.glob("*-ptcl-img.zst")
    with stream.open("rb") as f:
        table = SeekTable.read_from(f)
    assert table is not None and table.frames > 1
    cz = tmp_path / "cz"
    cz.mkdir()
    for f in image.iterdir():
        if f.name != "rescue.json" and f.is_file():
            data = f.read_bytes()
            if f == stream:
                data = data[: table.c_offsets[-1]]  # drop the skippable seek-table frame
            (cz / f.name).write_bytes(data)
    (cz / "clonezilla-img").write_text("Starting /usr/sbin/ocs-sr at 2026-11-24\n")
    with BrowseSession(cz) as session:
        assert tree_digest(session.root) == digest
    assert list((cz / ".rescue-index").glob("*.seektable"))
    assert not list((cz / ".rescue-index").glob("*.seekable.zst"))
