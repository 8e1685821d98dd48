"""Restore onto a smaller disk: partitions and filesystems shrink so the used data fits."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import (
    LoopDisk,
    PartSpec,
    RecordingProgress,
    clonezilla_copy,
    fill_tree,
    run,
    tree_digest,
)

from rescue.cli import main
from rescue.errors import RefusedError, RescueError
from rescue.image.view import open_image
from rescue.imagedev.overlay import Overlay
from rescue.imagedev.served import partition_view
from rescue.operations.restore import plan_restore, restore

MiB = 1 << 20


def filled(disk: LoopDisk, index: int, mnt: Path, seed: int, mib: int) -> dict[str, str]:
    disk.mount(index, mnt)
    fill_tree(mnt, seed=seed, approx_mib=mib)
    digest = tree_digest(mnt)
    disk.umount(mnt)
    return digest


def part_size(dev: str) -> int:
    return int(run("blockdev", "--getsize64", dev).strip())


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def minimum_from_refusal(image: Path, target: str) -> int:
    with pytest.raises(RefusedError) as refused:
        plan_restore(image, target)
    m = re.search(r"disk of at least (\d+) bytes", refused.value.message)
    assert m, refused.value.message
    return int(m.group(1))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self.data = data
        self.reads = 0

    def pread(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


def test_overlay_keeps_writes_apart_and_fills_partial_blocks(tmp_path: Path) -> None:
    # the copy-on-write logic alone; the shrink tests below run it under FUSE and a loop device
    base = _Bytes(bytes(range(256)) * 64)  # 16 KiB: four blocks
    ov = Overlay.create(base, tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()  # unlinked at once: nothing left behind
    assert ov.pread(0, ov.size) == base.data
    ov.pwrite(4090, b"X" * 10)  # straddles blocks 0 and 1, covers neither
    expected = bytearray(base.data)
    expected[4090:4100] = b"X" * 10
    assert ov.pread(0, ov.size) == bytes(expected)
    assert ov.pread(4095, 3) == bytes(expected[4095:4098])
    ov.pwrite(8192, b"Y" * 4096)  # a whole block: nothing read from below
    expected[8192:12288] = b"Y" * 4096
    assert ov.pread(0, ov.size) == bytes(expected)
    assert ov.written_blocks == 3
    assert ov.written_map() == bytes([0b0111])
    with pytest.raises(OSError):
        ov.pwrite(ov.size - 1, b"ZZ")
    assert base.data == bytes(range(256)) * 64  # the layer below is never written
    ov.close()


def test_overlay_zeroes_ranges_without_touching_the_image(tmp_path: Path) -> None:
    base = _Bytes(bytes(range(1, 256)) * 321)  # 81,855 bytes: 20 blocks, the last short
    ov = Overlay.create(base, tmp_path / "scratch")
    expected = bytearray(base.data)
    for off, n in [(8192, 8192), (100, 50), (4000, 20_000), (ov.size - 3000, 3000)]:
        ov.zero(off, n)  # whole blocks past the scratch file's end, inside a block, across
        # blocks, up to the end
        expected[off : off + n] = bytes(n)
        assert ov.pread(0, ov.size) == bytes(expected), (off, n)
    ov.pwrite(10_000, b"Q" * 10)  # writes after a zeroed range land on zeros
    expected[10_000:10_010] = b"Q" * 10
    assert ov.pread(0, ov.size) == bytes(expected)
    with pytest.raises(OSError):
        ov.zero(ov.size - 10, 20)
    assert base.data == bytes(range(1, 256)) * 321
    ov.close()


pytestmark_root = need("root", "loop", "udev")


@pytestmark_root
def test_writable_view_takes_discards_and_write_zeroes(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    # resize2fs zeroes inode tables with write-zeroes requests: the loop device over the
    # server's file must take them (they failed with EOPNOTSUPP, and the kernel printed
    # the failure on the console)
    src = loop_disk_factory(100, "gpt", [PartSpec(None, "ext4")])
    filled(src, 0, tmp_path / "m", seed=5, mib=20)
    image = tmp_path / "image"
    assert main(["capture", src.parts[0], str(image)]) == 0
    before = {f.name: file_hash(f) for f in image.iterdir() if f.is_file()}
    (ipart,) = open_image(image).parts
    with partition_view(image, ipart, writable=True) as view:
        fd = os.open(view.loop, os.O_RDONLY)
        try:
            whole = os.pread(fd, 8 * MiB, 0)
            assert whole.count(0) < len(whole)  # the superblock, inode tables, files
            run("blkdiscard", "-f", "-z", "-o", str(MiB), "-l", str(2 * MiB), view.loop)
            run("blkdiscard", "-f", "-o", str(4 * MiB), "-l", str(MiB), view.loop)
            run("blockdev", "--flushbufs", view.loop)
            after = os.pread(fd, 8 * MiB, 0)
        finally:
            os.close(fd)
    assert after[MiB : 3 * MiB] == bytes(2 * MiB)
    assert after[4 * MiB : 5 * MiB] == bytes(MiB)
    assert after[:MiB] == whole[:MiB] and after[3 * MiB : 4 * MiB] == whole[3 * MiB : 4 * MiB]
    assert after[5 * MiB :] == whole[5 * MiB :]
    assert {f.name: file_hash(f) for f in image.iterdir() if f.is_file()} == before  # unwritten


@pytestmark_root
def test_gpt_disk_restores_onto_a_disk_just_larger_than_the_used_data(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    parts = [PartSpec(32, "vfat", label="ESP"), PartSpec(300, "ext4"), PartSpec(None, "ntfs")]
    src = loop_disk_factory(700, "gpt", parts)
    ext_files = filled(src, 1, tmp_path / "m1", seed=11, mib=24)
    ntfs_files = filled(src, 2, tmp_path / "m2", seed=12, mib=24)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    image_before = {p.name: file_hash(p) for p in image.iterdir() if p.is_file()}

    # far too small: refused before anything is written, naming the smallest disk that works
    tiny = loop_disk_factory(64, None, [])
    tiny_before = file_hash(tiny.backing)
    least = minimum_from_refusal(image, tiny.path)
    assert main(["restore", str(image), tiny.path, "--yes"]) == 2
    assert file_hash(tiny.backing) == tiny_before
    used = 32 * MiB + 2 * 24 * MiB
    assert used < least < used + 120 * MiB, least  # follows the data, not the 700 MiB source

    # just larger than that: everything shrinks into it
    target = loop_disk_factory(least // MiB + 4, None, [])
    notes = RecordingProgress()
    plan = plan_restore(image, target.path)
    assert plan.fit is not None
    assert "shrinks" in plan.summary
    restore(plan, confirmed=True, progress=notes)
    target.rescan()
    assert len(target.parts) == 3
    assert part_size(target.parts[0]) == 32 * MiB  # the ESP keeps its size
    assert part_size(target.parts[1]) < 300 * MiB
    assert part_size(target.parts[2]) < part_size(src.parts[2])
    verify = subprocess.run(
        ["sgdisk", "-v", str(target.backing)], check=False, capture_output=True, text=True
    )
    assert "No problems found" in verify.stdout, verify.stdout
    run("e2fsck", "-fn", target.parts[1])
    run("ntfsfix", "--no-action", target.parts[2])
    run("fsck.vfat", "-n", target.parts[0])
    # each filesystem fills its smaller partition, and holds every file unchanged
    blocks = run("dumpe2fs", "-h", target.parts[1])
    head = dict(ln.split(":", 1) for ln in blocks.splitlines() if ":" in ln)
    fs_bytes = int(head["Block count"]) * int(head["Block size"])
    assert part_size(target.parts[1]) - MiB < fs_bytes <= part_size(target.parts[1])
    info = run("ntfsresize", "--info", "--force", "--no-action", target.parts[2])
    vol = int(next(ln for ln in info.splitlines() if "Current volume size" in ln).split()[3])
    assert part_size(target.parts[2]) - MiB < vol <= part_size(target.parts[2])
    with open(target.parts[2], "rb") as f:
        hidden = int.from_bytes(f.read(512)[0x1C:0x20], "little")
    start = int(Path(f"/sys/class/block/{Path(target.parts[2]).name}/start").read_text())
    assert hidden == start  # the NTFS boot sector knows where its partition now starts
    # (resize2fs stamps the folders whose entries it renumbered; their times are put back)
    assert tree_digest(target.mount(1, tmp_path / "t1", "ro")) == ext_files
    assert tree_digest(target.mount(2, tmp_path / "t2", "ro")) == ntfs_files
    assert any("shrunk" in n for n in notes.notes)
    # the image is read, never written (the shrinking happened on a scratch copy)
    assert {p.name: file_hash(p) for p in image.iterdir() if p.is_file()} == image_before
    assert not any((image / ".rescue-index").glob("overlay-*"))


def full_attributes(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a file-level copy must keep, per path: type, mode, owner, times, links, data,
    every extended attribute (ACLs included), device numbers and link targets."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (
            [".", *sorted(dirnames + filenames)]
            if dirpath == str(root)
            else sorted(dirnames + filenames)
        ):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            xattrs = {
                k: os.getxattr(p, k, follow_symlinks=False)
                for k in sorted(os.listxattr(p, follow_symlinks=False))
            }
            if stat.S_ISREG(st.st_mode):
                content: object = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            else:
                content = st.st_rdev
            out[rel] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size,
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0, content, xattrs,
            )  # fmt: skip
    return out


@pytestmark_root
def test_xfs_partition_restores_onto_a_smaller_disk_file_by_file(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src = loop_disk_factory(900, "gpt", [PartSpec(None, "xfs", label="data")])
    mnt = src.mount(0, tmp_path / "m")
    fill_tree(mnt, seed=21, approx_mib=16)
    (mnt / "shared").mkdir(mode=0o2775)
    os.chown(mnt / "shared", 1234, 5678)
    (mnt / "shared" / "owned").write_text("owned by someone else\n")
    os.chown(mnt / "shared" / "owned", 1234, 5678, follow_symlinks=False)
    os.chmod(mnt / "shared" / "owned", 0o4750)
    os.link(mnt / "shared" / "owned", mnt / "owned-again")
    run("setfacl", "-m", "u:4321:rwx,g:99:r", str(mnt / "shared" / "owned"))
    run("setfacl", "-d", "-m", "u:4321:rx", str(mnt / "shared"))
    os.setxattr(mnt / "shared" / "owned", "trusted.rescue", b"kept too")
    os.mkfifo(mnt / "fifo")
    os.mknod(mnt / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.utime(mnt / "shared", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    src.umount(mnt)
    uuid = run("blkid", "-p", "-s", "UUID", "-o", "value", src.parts[0]).strip()
    before = full_attributes(src.mount(0, tmp_path / "m", "ro"))
    src.umount(tmp_path / "m")
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0

    target = loop_disk_factory(400, None, [])  # less than half the source
    plan = plan_restore(image, target.path)
    assert plan.fit is not None
    restore(plan, confirmed=True, progress=RecordingProgress())
    target.rescan()
    assert part_size(target.parts[0]) < 400 * MiB
    run("xfs_repair", "-n", target.parts[0])
    assert run("blkid", "-p", "-s", "UUID", "-o", "value", target.parts[0]).strip() == uuid
    assert run("blkid", "-p", "-s", "LABEL", "-o", "value", target.parts[0]).strip() == "data"
    after = full_attributes(target.mount(0, tmp_path / "t", "ro,nouuid"))
    assert after.keys() == before.keys()
    for path, attrs in before.items():
        assert after[path] == attrs, path
    assert after["owned-again"][5] == 2  # the hard link is one file with two names


@pytestmark_root
@pytest.mark.parametrize("fs", ["ext4", "btrfs", "ext4 as Clonezilla writes it"])
def test_partition_image_restores_onto_a_smaller_partition(
    loop_disk_factory: DiskFactory, tmp_path: Path, fs: str
) -> None:
    src = loop_disk_factory(600, "gpt", [PartSpec(None, fs.split(maxsplit=1)[0])])
    files = filled(src, 0, tmp_path / "m", seed=31, mib=20)
    image = tmp_path / "image"
    assert main(["capture", src.parts[0], str(image)]) == 0
    if "Clonezilla" in fs:  # one zstd frame, no seek table: indexed once, then shrunk
        clonezilla_copy(image, tmp_path / "cz", "zstd -q -T0 -3")
        image = tmp_path / "cz"
    target = loop_disk_factory(300, "gpt", [PartSpec(None, None)])
    plan = plan_restore(image, target.parts[0])
    assert plan.fit is not None
    restore(plan, confirmed=True, progress=RecordingProgress())
    if fs.startswith("ext4"):
        run("e2fsck", "-fn", target.parts[0])
    else:
        run("btrfs", "check", "--readonly", target.parts[0])
    assert tree_digest(target.mount(0, tmp_path / "t", "ro")) == files


@pytestmark_root
def test_keep_layout_on_a_smaller_disk_is_refused_with_the_way_out(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src = loop_disk_factory(300, "gpt", [PartSpec(None, "ext4")])
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    target = loop_disk_factory(200, None, [])
    with pytest.raises(RefusedError) as refused:
        plan_restore(image, target.path, "keep")
    assert refused.value.hint is not None and "--layout fit" in refused.value.hint


@pytestmark_root
def test_no_room_for_the_scratch_space_is_refused_before_any_write(
    loop_disk_factory: DiskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = loop_disk_factory(300, "gpt", [PartSpec(None, "ext4")])
    filled(src, 0, tmp_path / "m", seed=41, mib=16)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    ro = tmp_path / "ro"  # the image on a read-only share: the scratch must go elsewhere
    ro.mkdir()
    small = tmp_path / "small"  # and elsewhere is a tiny RAM disk
    small.mkdir()
    run("mount", "--bind", "-o", "ro", str(image), str(ro))
    try:
        run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small))
        try:
            monkeypatch.setenv("RESCUE_CACHE_DIR", str(small))
            target = loop_disk_factory(200, None, [])
            before = file_hash(target.backing)
            with pytest.raises(RescueError) as refused:
                plan_restore(ro, target.path)
            assert "No room to keep the scratch space for resizing" in refused.value.message
            assert refused.value.hint is not None and "RESCUE_CACHE_DIR" in refused.value.hint
            assert file_hash(target.backing) == before
        finally:
            run("umount", str(small))
    finally:
        run("umount", str(ro))
