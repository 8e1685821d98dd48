"""Real LVM physical volumes for the end-to-end layer tests, made without device-mapper.

LVM's own tools write the PV, the VG and the LVs on a loop device (``--driverloaded
n``, nothing activated, see TESTBED.md); each LV's filesystem is made and filled
through a loop device over its extents. Every LVM command sees only the devices
it is given and writes nothing under /etc/lvm, so a source and its restored copy
(same UUIDs) never meet. What a restored PV holds is read back the same way: the
layout from ``pvs``/``lvs``, each filesystem checked by its own checker and
mounted read-only through a loop device at its offset.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from diskbench import fill_tree, run, tree_digest

MiB = 1 << 20
LVM_CONFIG = "devices{use_devicesfile=0} backup{backup=0 archive=0}"
LVM_PART_TYPE = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
"""GPT's partition type for an LVM physical volume."""


def need_lvm() -> None:
    if shutil.which("pvcreate") is None:
        pytest.skip("lvm2 is not installed")


@contextlib.contextmanager
def attached(
    path: Path | str, offset: int | None = None, size: int | None = None, *, read_only: bool = False
) -> Iterator[str]:
    """A loop device over ``path`` (or ``size`` bytes of it at ``offset``), detached after."""
    window = ["-o", str(offset)] if offset is not None else []
    window += ["--sizelimit", str(size)] if size is not None else []
    ro = ["-r"] if read_only else []
    loop = run("losetup", "--find", "--show", *ro, *window, str(path)).strip()
    try:
        yield loop
    finally:
        run("losetup", "-d", loop, check=False)


@dataclass(frozen=True)
class Layout:
    """What LVM's own tools report about one PV and the LVs on it."""

    vg: str
    pe_start: int
    extent: int
    pe_count: int
    lvs: dict[str, tuple[int, tuple[tuple[int, int], ...]]]
    """LV name -> (bytes, its (first, last) extents on the PV, in LV order)."""

    def where(self, lv: str) -> tuple[int, int]:
        """(offset on the PV, bytes) of an LV that lies in one piece."""
        size, ranges = self.lvs[lv]
        ((first, last),) = ranges
        assert (last - first + 1) * self.extent == size
        return self.pe_start + first * self.extent, size


class Lvm:
    """LVM's commands, seeing only ``device`` and writing nothing under /etc/lvm."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.scope = ["--devices", device, "--config", LVM_CONFIG]

    def __call__(self, command: str, *args: str) -> str:
        return run(command, *self.scope, *args)

    def lv(self, command: str, *args: str) -> str:
        """A command that would reach device-mapper, told that there is none."""
        return self(command, "--driverloaded", "n", *args)

    def layout(self) -> Layout:
        report = ["--noheadings", "--units", "b", "--nosuffix", "--separator", ";"]
        pvs = self("pvs", *report, "-o", "vg_name,pe_start,vg_extent_size,pv_pe_count")
        (line,) = pvs.split()
        vg, pe_start, extent, pe_count = line.split(";")
        lvs = self.lv(
            "lvs", "-a", *report, "-o", "lv_name,lv_size,seg_pe_ranges",
            "--sort", "lv_name,seg_start_pe",
        )  # fmt: skip
        found: dict[str, tuple[int, list[tuple[int, int]]]] = {}
        for row in lvs.strip().splitlines():
            name, size, pe_ranges = row.strip().split(";")
            entry = found.setdefault(name, (int(size), []))
            for area in pe_ranges.split():
                match = re.fullmatch(r"(.+):(\d+)-(\d+)", area)
                assert match is not None and match[1] == self.device, area
                entry[1].append((int(match[2]), int(match[3])))
        return Layout(
            vg, int(pe_start), int(extent), int(pe_count),
            {n: (s, tuple(r)) for n, (s, r) in found.items()},
        )  # fmt: skip


def make_filesystem(
    device: str, offset: int, size: int, mkfs: list[str], seed: int, mib: int, where: Path
) -> dict[str, str]:
    """A filesystem made and filled at ``offset`` of ``device``; returns its files' digest."""
    with attached(device, offset, size) as loop:
        run(*mkfs, loop)
        where.mkdir()
        run("mount", loop, str(where))
        try:
            fill_tree(where, seed, mib)
            return tree_digest(where)
        finally:
            run("umount", str(where))


CHECK = {"ext4": ["e2fsck", "-fn"], "xfs": ["xfs_repair", "-n"]}


def checked_digest(device: str, offset: int, size: int, fstype: str, where: Path) -> dict[str, str]:
    """The files of the filesystem at ``offset`` of ``device``, after its checker found it
    clean; read through a read-only loop device and a read-only mount."""
    with attached(device, offset, size, read_only=True) as loop:
        run(*CHECK[fstype], loop)
        assert run("blkid", "-p", "-o", "value", "-s", "TYPE", loop).strip() == fstype
        where.mkdir()
        options = "ro,norecovery" if fstype == "xfs" else "ro,noload"
        run("mount", "-t", fstype, "-o", options, loop, str(where))
        try:
            return tree_digest(where)
        finally:
            run("umount", str(where))
            where.rmdir()


def blkid_at(device: str, offset: int, size: int) -> dict[str, str]:
    """What blkid says of the bytes at ``offset`` of ``device`` (TYPE, UUID, ...)."""
    with attached(device, offset, size, read_only=True) as loop:
        out = run("blkid", "-p", "-o", "export", loop)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def write_into(source: Path, device: str) -> None:
    """The bytes of ``source`` at the start of ``device`` (holes written as zeros)."""
    with source.open("rb") as src, open(device, "r+b") as dst:
        while chunk := src.read(4 * MiB):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())


def sparse_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path
