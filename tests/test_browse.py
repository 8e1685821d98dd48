"""Browsing images: read-only mounts of every filesystem, extraction, clean teardown."""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import (
    LoopDisk,
    PartSpec,
    clonezilla_copy,
    ext4_with_garbage,
    fill_tree,
    run,
    tree_digest,
    without_links,
)

from rescue.browse.session import BrowseSession
from rescue.cli import main
from rescue.errors import BadInputError
from rescue.image.partclone import block_offset
from rescue.image.random_access import PartitionReader
from rescue.image.seekable import SeekTable
from rescue.image.view import open_image
from rescue.imagedev.served import partition_view

pytestmark = [need("root", "loop", "fuse"), pytest.mark.usefixtures("private_run_dir")]


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
    # the links themselves are copied, never followed; the FIFO is made, not opened
    assert os.readlink(tmp_path / "links" / "abs-link") == "/etc"
    assert stat.S_ISFIFO((tmp_path / "links" / "a-fifo").lstat().st_mode)
    assert res.symlinks == 2 and res.specials == 1 and res.skipped == [] and res.ok
    assert leftovers(private_run_dir, []) == []


GIB = 1 << 30
SPARSE_DATA_AT = 512 << 20  # the 4 KiB of data in the middle of the 1 GiB sparse file


def io_counters() -> dict[str, int]:
    """Bytes this process read and wrote through system calls (sendfile included)."""
    lines = Path("/proc/self/io").read_text().splitlines()
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture(params=["ext4", "ntfs"])
def sparse_image(
    request: pytest.FixtureRequest, loop_disk_factory: DiskFactory, tmp_path: Path
) -> tuple[Path, str]:
    """An image holding sparse files: ext4 (the kernel tells holes), NTFS (ntfs-3g does not)."""
    fs: str = request.param
    disk = loop_disk_factory(100, None, [PartSpec(None, fs)])
    disk.parts = [disk.path]
    mnt = tmp_path / "src"
    disk.mount(0, mnt)
    with (mnt / "vm-disk.img").open("wb") as f:  # 1 GiB, 4 KiB of data in its middle
        f.truncate(GIB)
        f.seek(SPARSE_DATA_AT)
        f.write(os.urandom(4096))
    with (mnt / "only-hole").open("wb") as f:
        f.truncate(10 << 20)
    with (mnt / "ends.bin").open("wb") as f:  # data at both ends, an odd size
        f.write(os.urandom(70_000))
        f.seek((3 << 20) + 123 - 10)
        f.write(b"0123456789")
    with (mnt / "dense-zeros.bin").open("wb") as f:  # zeros written: allocated, not a hole
        f.write(bytes(1 << 20))
        f.write(b"tail")
    os.sync()
    disk.umount(mnt)
    image = tmp_path / "image"
    capture(disk.path, image)
    disk.detach()
    return image, fs


def test_sparse_files_stay_sparse(
    sparse_image: tuple[Path, str], tmp_path: Path, private_run_dir: Path
) -> None:
    image, fs = sparse_image
    out = tmp_path / "out"
    names = ["vm-disk.img", "only-hole", "ends.bin", "dense-zeros.bin"]
    with BrowseSession(image) as session:
        src = {n: os.lstat(session.root / n) for n in names}
        before = io_counters()
        started = time.monotonic()
        res = session.extract(names, out)
        seconds = time.monotonic() - started
        after = io_counters()
        assert res.ok and res.files == 4, res.failed
        assert res.bytes == sum(st.st_size for st in src.values())
        for n in names:
            got = (out / n).stat()
            assert got.st_size == src[n].st_size, n
            assert sha256_of(out / n) == sha256_of(session.root / n), n
    blocks = {n: (out / n).stat().st_blocks * 512 for n in names}
    assert blocks["vm-disk.img"] <= 256 << 10, blocks
    assert blocks["only-hole"] == 0, blocks
    assert blocks["ends.bin"] <= 512 << 10, blocks
    assert blocks["dense-zeros.bin"] >= 1 << 20, blocks  # a file without holes keeps none
    with (out / "vm-disk.img").open("rb") as f:
        assert os.lseek(f.fileno(), 0, os.SEEK_DATA) >= SPARSE_DATA_AT - (64 << 10)
    written = after["wchar"] - before["wchar"]
    read = after["rchar"] - before["rchar"]
    assert written < 4 << 20, written  # only the data went to the destination
    if fs == "ext4":  # the kernel tells the holes: they are not even read
        assert read < 8 << 20, read
    print(f"{fs}: {read} bytes read, {written} written in {seconds:.2f} s")
    assert leftovers(private_run_dir, []) == []


# a file capability (cap_net_raw, effective) as the kernel stores it: vfs_cap_data revision 2
NET_RAW_CAPABILITY = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)


SPECIALS = {
    "dev/null": (stat.S_IFCHR, 0o666, os.makedev(1, 3)),
    "dev/sda": (stat.S_IFBLK, 0o660, os.makedev(8, 0)),
    "dev/initctl": (stat.S_IFIFO, 0o600, 0),
    "dev/log": (stat.S_IFSOCK, None, 0),
}


@pytest.fixture
def special_image(
    loop_disk_factory: DiskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """An ext4 image with set-id files, a file capability, device nodes, a FIFO, a socket."""
    disk = loop_disk_factory(100, None, [PartSpec(None, "ext4")])
    disk.parts = [disk.path]
    mnt = tmp_path / "src"
    disk.mount(0, mnt)
    (mnt / "usr").mkdir()
    tool = mnt / "usr" / "su-tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chown(tool, 1000, 1000)
    os.chmod(tool, 0o4755)
    shared = mnt / "shared"
    shared.mkdir()
    os.chown(shared, 0, 50)
    os.chmod(shared, 0o2775)
    ping = mnt / "usr" / "ping"
    ping.write_bytes(b"\x7fELF")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", NET_RAW_CAPABILITY)
    (mnt / "dev").mkdir()
    monkeypatch.chdir(mnt)  # a socket's path must be short
    for name, (kind, mode, rdev) in SPECIALS.items():
        if kind == stat.S_IFSOCK:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(name)
        else:
            os.mknod(name, kind, rdev)
            os.chmod(name, mode or 0)  # the mode itself, not the umask's
    monkeypatch.chdir(tmp_path)
    os.chown(mnt / "dev" / "sda", 0, 6)
    (mnt / "etc").mkdir()
    (mnt / "etc" / "passwd").write_text("root:x:0:0:image:/root:/bin/sh\n")
    os.symlink("/etc/passwd", mnt / "passwd-link")  # the image's /etc/passwd, never the host's
    disk.umount(mnt)
    image = tmp_path / "image"
    capture(disk.path, image)
    disk.detach()
    return image


def test_extract_keeps_set_id_bits_capabilities_and_device_nodes(
    special_image: Path,
    tmp_path: Path,
    private_run_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert main(["extract", str(special_image), "/", "--to", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 special file(s)" in printed and "not created" not in printed
    st = (out / "usr" / "su-tool").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (1000, 1000)
    st = (out / "shared").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o2775 and st.st_gid == 50
    assert os.getxattr(out / "usr" / "ping", "security.capability") == NET_RAW_CAPABILITY
    for name, (kind, mode, rdev) in SPECIALS.items():
        st = (out / name).lstat()
        assert stat.S_IFMT(st.st_mode) == kind, name
        assert mode is None or stat.S_IMODE(st.st_mode) == mode, name
        assert st.st_rdev == rdev, name
    assert (out / "dev" / "sda").lstat().st_gid == 6
    assert leftovers(private_run_dir, []) == []


def test_no_special_drops_privileges_and_skips_special_files(
    special_image: Path,
    tmp_path: Path,
    private_run_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert main(["extract", str(special_image), "/", "--to", str(out), "--no-special"]) == 0
    printed = capsys.readouterr().out
    assert "4 special file(s) not created (not failures)" in printed
    for name in SPECIALS:
        assert f"/{name}: " in printed, name
        assert not os.path.lexists(out / name), name
    assert "/dev/sda: block device 8:0, left out" in printed
    assert "3 item(s) copied without their set-uid/set-gid bits" in printed
    for name in ("/usr/su-tool", "/shared", "/usr/ping"):
        assert f"  {name}\n" in printed, name
    st = (out / "usr" / "su-tool").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (1000, 1000)
    assert stat.S_IMODE((out / "shared").lstat().st_mode) == 0o775
    assert "security.capability" not in os.listxattr(out / "usr" / "ping")
    assert (out / "usr" / "ping").read_bytes() == b"\x7fELF"
    with BrowseSession(special_image) as session:  # the same through the core function
        res = session.extract(["dev"], tmp_path / "out2", no_special=True)
    assert res.ok and res.folders == 1 and res.specials == 0
    assert sorted(path for path, _ in res.skipped) == sorted(f"/{n}" for n in SPECIALS)
    assert os.listdir(tmp_path / "out2" / "dev") == []
    assert leftovers(private_run_dir, []) == []


def test_symlink_to_an_absolute_path_is_never_followed(
    special_image: Path, tmp_path: Path, private_run_dir: Path
) -> None:
    host = Path("/etc/passwd")
    host_before = (host.lstat(), host.read_bytes())
    outside = tmp_path / "outside.txt"
    outside.write_text("not to be touched")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "passwd")  # planted where the image's etc/passwd would go
    assert main(["extract", str(special_image), "passwd-link", "--to", str(out)]) == 0
    assert os.readlink(out / "passwd-link") == "/etc/passwd"
    # .. cannot climb out of the image: this is the image's /etc/passwd
    assert main(["extract", str(special_image), "../../../etc/passwd", "--to", str(out)]) == 1
    assert outside.read_text() == "not to be touched"
    assert os.readlink(out / "passwd") == str(outside)
    assert main(["extract", str(special_image), "../../etc/passwd", "--to", str(out / "e")]) == 0
    assert (out / "e" / "passwd").read_text() == "root:x:0:0:image:/root:/bin/sh\n"
    # through the link: the image's file it names, under the link's own name never followed
    with BrowseSession(special_image) as session:
        assert session.read_file("passwd-link") == b"root:x:0:0:image:/root:/bin/sh\n"
        res = session.extract(["/passwd-link/"], tmp_path / "again")
    assert res.symlinks == 1 and os.readlink(tmp_path / "again" / "passwd-link") == "/etc/passwd"
    st, data = host_before
    now = host.lstat()
    assert host.read_bytes() == data
    assert (now.st_mtime_ns, now.st_ctime_ns, now.st_uid, now.st_mode) == (
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_uid,
        st.st_mode,
    )
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


def test_served_partition_reads_as_the_source(tmp_path: Path) -> None:
    """The loop device over the server's file gives the partition's bytes (free blocks as
    zeros) for reads over used and free blocks and frame ends, and reads it directly."""
    part, data, expected = ext4_with_garbage(
        tmp_path, seed=4, files=40, largest=900_000, size_mib=64, garbage_mib=60
    )
    rng = random.Random(4)
    image = tmp_path / "image"
    capture(str(part), image)
    (ipart,) = open_image(image).parts
    with partition_view(image, ipart) as view:
        name = os.path.basename(view.loop)
        assert Path(f"/sys/block/{name}/loop/dio").read_text().strip() == "1"
        fd = os.open(view.loop, os.O_RDONLY)
        try:
            spans = [(rng.randrange(0, len(data)), rng.choice([512, 4096, 70_000, 3 << 20]))
                     for _ in range(150)]  # fmt: skip
            for off, n in [*spans, (0, len(data)), (len(data) - 100, 4096)]:
                assert os.pread(fd, n, off) == expected[off : off + n], (off, n)
        finally:
            os.close(fd)
