"""The real-disk bench: loop-backed disks with real partition tables and filesystems.

Everything made here is undone by :meth:`LoopDisk.detach` (unmount, swapoff,
partx -d, losetup -d, nodes made by hand), which the fixtures always call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MKFS: dict[str, list[str]] = {
    "ext2": ["mkfs.ext2", "-q", "-F"],
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "ntfs": ["mkntfs", "-q", "-F", "-Q"],
    "vfat": ["mkfs.vfat"],
    "exfat": ["mkfs.exfat"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "swap": ["mkswap"],
}
LABEL_OPT = {"ntfs": "-L", "vfat": "-n", "exfat": "-L", "swap": "-L", "xfs": "-L", "btrfs": "-L"}
GPT_TYPES = {
    "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    "vfat": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
}
MBR_TYPES = {"swap": "82", "ntfs": "7", "vfat": "c", "exfat": "7"}


def run(*argv: str, check: bool = True, input: str | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def rescue_command(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command as a technician runs it (no terminal on stdin): what they see, exit
    code and all, never a traceback hidden by an in-process call."""
    return subprocess.run(
        [sys.executable, "-m", "rescue", *args],
        capture_output=True, text=True, check=False, timeout=timeout,
        stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )  # fmt: skip


def udev_alive() -> bool:
    """A udev daemon answers (its control socket may outlive it, so ask)."""
    res = subprocess.run(
        ["udevadm", "control", "--ping", "--timeout=2"], capture_output=True, check=False
    )
    return res.returncode == 0


def settle() -> None:
    run("udevadm", "settle", "--timeout=30", check=False)


@dataclass(frozen=True)
class PartSpec:
    size_mib: int | None
    """None: the rest of the disk."""
    fs: str | None = None
    label: str | None = None
    type: str | None = None
    """Partition type for sfdisk (GUID or MBR id); a default from ``fs`` otherwise."""


@dataclass
class LoopDisk:
    path: str
    backing: Path
    parts: list[str] = field(default_factory=list)
    _mounts: list[Path] = field(default_factory=list)
    _swaps: list[str] = field(default_factory=list)
    _made_nodes: list[str] = field(default_factory=list)
    _attached: bool = True

    def mount(self, index: int, mountpoint: Path, *options: str) -> Path:
        mountpoint.mkdir(parents=True, exist_ok=True)
        dev = self.parts[index]
        fstype = run("blkid", "-p", "-o", "value", "-s", "TYPE", dev, check=False).strip()
        opts = ("-o", ",".join(options)) if options else ()
        if fstype == "ntfs":
            run("ntfs-3g", *opts, dev, str(mountpoint))
        elif fstype == "exfat":  # no exfat in this kernel: the FUSE driver
            run("mount.exfat-fuse", *opts, dev, str(mountpoint))
        else:
            run("mount", *opts, dev, str(mountpoint))
        self._mounts.append(mountpoint)
        return mountpoint

    def umount(self, mountpoint: Path) -> None:
        run("umount", str(mountpoint))
        self._mounts.remove(mountpoint)
        settle()

    def swapon(self, index: int) -> None:
        run("swapon", self.parts[index])
        self._swaps.append(self.parts[index])

    def swapoff(self, index: int) -> None:
        run("swapoff", self.parts[index])
        self._swaps.remove(self.parts[index])

    def rescan(self) -> None:
        """Re-read the partition table after something rewrote it.

        udev re-reads a disk's table after any program closes the disk opened for
        writing; a kernel without partition parsers then drops every partition,
        so wait for udev first and let partx put them back.
        """
        settle()
        run("partx", "-u", self.path, check=False)
        settle()
        self.parts = _partition_nodes(self.path, self._made_nodes)

    def detach(self) -> None:
        if not self._attached:
            return
        for m in reversed(self._mounts):
            run("umount", "-l", str(m), check=False)
        self._mounts.clear()
        for s in self._swaps:
            run("swapoff", s, check=False)
        self._swaps.clear()
        settle()
        run("partx", "-d", self.path, check=False)
        for _ in range(20):
            if (
                subprocess.run(
                    ["losetup", "-d", self.path], capture_output=True, check=False
                ).returncode
                == 0
            ):
                break
            time.sleep(0.25)
        for n in self._made_nodes:
            Path(n).unlink(missing_ok=True)
        self._attached = False
        settle()


def _partition_nodes(loop: str, made: list[str]) -> list[str]:
    name = Path(loop).name
    sysdir = Path("/sys/block") / name
    found = sorted(
        (int((p / "partition").read_text()), p)
        for p in sysdir.iterdir()
        if (p / "partition").exists()
    )
    nodes = []
    for _num, p in found:
        node = Path("/dev") / p.name
        for _ in range(50):
            if node.exists():
                break
            time.sleep(0.05)
        if not node.exists():
            major, minor = (int(x) for x in (p / "dev").read_text().split(":"))
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
            made.append(str(node))
        nodes.append(str(node))
    return nodes


def attach(backing: Path, *, read_only: bool = False) -> LoopDisk:
    args = ["losetup", "-f", "-P", "--show"] + (["-r"] if read_only else []) + [str(backing)]
    loop = run(*args).strip()
    disk = LoopDisk(path=loop, backing=backing)
    try:
        settle()  # udev's own handling of the attach first, then the partitions
        run("partx", "-u", loop, check=False)
        settle()
        disk.parts = _partition_nodes(loop, disk._made_nodes)
    except BaseException:
        disk.detach()
        raise
    return disk


def make_disk(path: Path, size_mib: int, table: str | None, parts: Sequence[PartSpec]) -> LoopDisk:
    """A sparse disk file with a partition table and filesystems, attached to a loop device."""
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    if table is not None:
        lines = [f"label: {table}"]
        for spec in parts:
            size = f"size={spec.size_mib}MiB, " if spec.size_mib else ""
            ptype = spec.type or (GPT_TYPES if table == "gpt" else MBR_TYPES).get(spec.fs or "")
            lines.append(f"{size}type={ptype or 'L'}")
        run("sfdisk", "-q", str(path), input="\n".join(lines) + "\n")
    disk = attach(path)
    if table is not None and len(disk.parts) != len(parts):
        disk.detach()
        raise RuntimeError(
            f"{path}: expected {len(parts)} partitions, the kernel shows {disk.parts}"
        )
    try:
        targets = disk.parts if table is not None else [disk.path]
        for spec, node in zip(parts, targets, strict=False):
            if spec.fs:
                cmd = list(MKFS[spec.fs])
                if spec.label:
                    cmd += [LABEL_OPT.get(spec.fs, "-L"), spec.label]
                run(*cmd, node)
        for node in targets:
            run("udevadm", "trigger", "--action=change", node, check=False)
        settle()
    except BaseException:
        disk.detach()
        raise
    return disk


def fill_tree(root: Path, seed: int, approx_mib: int = 8) -> None:
    """A deterministic mix of files: text, binary, a big file, links, a sparse file, an xattr."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(10_000)}" for _ in range(500)]
    budget = approx_mib << 20
    (root / "docs" / "deep" / "er").mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    i = 0
    while budget > (approx_mib << 20) // 2:
        size = rng.randrange(100, 40_000)
        text = " ".join(rng.choice(words) for _ in range(size // 5)).encode()
        (root / "docs" / f"note{i:04d}.txt").write_bytes(text)
        budget -= len(text)
        i += 1
    for j in range(8):
        data = rng.randbytes(rng.randrange(1000, 200_000))
        (root / "bin" / f"blob{j}.bin").write_bytes(data)
        budget -= len(data)
    big = root / "big.dat"
    big.write_bytes(rng.randbytes(max(budget, 1 << 20)))
    (root / "docs" / "deep" / "er" / "empty").write_bytes(b"")
    with contextlib.suppress(OSError):  # FAT and exFAT have no links
        os.symlink("../big.dat", root / "docs" / "link-to-big")
        os.link(root / "bin" / "blob0.bin", root / "bin" / "hardlink0")
    with (root / "sparse.img").open("wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    os.chmod(root / "bin" / "blob1.bin", 0o751)
    with contextlib.suppress(OSError):  # not every filesystem takes user xattrs
        os.setxattr(root / "big.dat", "user.rescue", b"kept")


def disk_digest(path: str) -> str:
    """SHA-256 of every byte of a disk (or a file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> type, mode, owner, mtime, size, links, content hash or target, xattr."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("lost+found", "System Volume Information")]
        for name in sorted(filenames + dirnames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            owner = f"{st.st_uid}:{st.st_gid} {st.st_mtime_ns}"
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link {os.readlink(p)} {owner}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {stat.S_IMODE(st.st_mode):o} {owner}"
            elif not stat.S_ISREG(st.st_mode):  # fifo, socket, device: never opened
                out[rel] = f"special {stat.S_IFMT(st.st_mode):o} {owner}"
            else:
                h = hashlib.sha256(p.read_bytes()).hexdigest()
                try:
                    xattr = os.getxattr(p, "user.rescue", follow_symlinks=False).decode()
                except OSError:
                    xattr = ""
                out[rel] = (
                    f"file {stat.S_IMODE(st.st_mode):o} {st.st_size} {h} {xattr} "
                    f"links={st.st_nlink} {owner}"
                )
    return out


def without_links(digest: dict[str, str], prefix: str = "") -> dict[str, str]:
    """Digest entries under ``prefix`` without the hard-link count (copies do not keep links)."""
    out = {}
    for k, v in digest.items():
        if k.startswith(prefix):
            out[k[len(prefix) :]] = " ".join(w for w in v.split() if not w.startswith("links="))
    return out


class RecordingProgress:
    """A ProgressReporter that keeps the notes, for tests that check what a job said."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def phase(self, name: str, total: int | None) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)


def clonezilla_copy(image: Path, dest: Path, compress: str) -> Path:
    """The same partition image as Clonezilla writes it: one plain stream, no rescue.json."""
    dest.mkdir()
    (stream,) = image.glob("*-ptcl-img.zst")
    for f in image.iterdir():
        if "ptcl-img" not in f.name and f.name != "rescue.json":
            (dest / f.name).write_bytes(f.read_bytes())
    (dest / "clonezilla-img").write_text("Starting /usr/sbin/ocs-sr at 2026-11-24\n")
    suffix = "gz" if compress.startswith("gzip") else "zst"
    out = dest / stream.name.replace(".zst", f".{suffix}")
    subprocess.run(f"zstd -q -d -c {stream} | {compress} -c > {out}", shell=True, check=True)
    return out


def ext4_with_garbage(
    folder: Path, *, seed: int, files: int, largest: int, size_mib: int, garbage_mib: int
) -> tuple[Path, bytes, bytes]:
    """An ext4 file (1 KiB blocks) of ``files`` random files up to ``largest`` bytes, with
    a MiB of random bytes in its free space at ``garbage_mib``: (the file, its bytes, its
    bytes with every free block zeroed, as an image of it reads)."""
    from rescue.filesystems.ext import read_allocation  # noqa: PLC0415

    tree = folder / "tree"
    tree.mkdir()
    rng = random.Random(seed)
    for i in range(files):
        (tree / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, largest)))
    part = folder / "part.img"
    with part.open("wb") as f:
        f.truncate(size_mib << 20)
    run("mkfs.ext4", "-q", "-b", "1024", "-d", str(tree), str(part))
    with part.open("r+b") as f:  # garbage in free space that must read as zeros
        f.seek(garbage_mib << 20)
        f.write(os.urandom(1 << 20))
    data = part.read_bytes()
    with part.open("rb") as f:
        alloc = read_allocation(f, len(data))
    expected = bytearray(len(data))
    bs = alloc.block_size
    for first, count in alloc.runs():
        expected[first * bs : (first + count) * bs] = data[first * bs : (first + count) * bs]
    return part, data, bytes(expected)
