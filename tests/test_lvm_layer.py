"""Reading through an LVM2 physical volume: its LVs as volumes, the rest stored whole.

Every PV here is written by LVM's own tools on a loop device over a sparse file
(no device-mapper needed, see TESTBED.md): pvcreate, vgcreate and lvcreate for
linear and striped LVs, and vgcfgrestore for the layouts lvcreate makes only
with device-mapper (a thin pool, an old-style snapshot, two stripes on one PV),
from metadata text the test writes. What rescue reads is checked against what
``lvs`` and ``pvs`` report; the filesystems inside are made through a loop
device at each LV's offset. The hostile cases start from a real PV and rewrite
its metadata text (checksums fixed, so the parser is what meets it).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from capabilities import need
from diskbench import fill_tree, run

from rescue.containers import lvm
from rescue.containers.base import PROBE_BYTES, Container, Opened, binary_view
from rescue.errors import FilesystemError
from rescue.filesystems.detect import allocation_for

MiB = 1 << 20
LVM_CONFIG = "devices{use_devicesfile=0} backup{backup=0 archive=0}"
MDA = 4096
"""Where pvcreate puts the first metadata area."""

pytestmark = [
    need("root", "loop"),
    pytest.mark.skipif(shutil.which("pvcreate") is None, reason="lvm2 is not installed"),
]


@contextlib.contextmanager
def attached(path: Path | str, offset: int | None = None, size: int | None = None) -> Iterator[str]:
    """A loop device over ``path`` (or over ``size`` bytes of it at ``offset``), detached after."""
    window = ["-o", str(offset), "--sizelimit", str(size)] if offset is not None else []
    loop = run("losetup", "--find", "--show", *window, str(path)).strip()
    try:
        yield loop
    finally:
        run("losetup", "-d", loop, check=False)


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


@dataclass(frozen=True)
class Report:
    """What LVM's own tools say about the PVs and LVs."""

    pe_start: dict[str, int]
    """Device -> bytes before its first extent."""
    extent: int
    sizes: dict[str, int]
    """LV name (hidden ones without brackets) -> bytes."""
    ranges: dict[str, list[tuple[str, int, int]]]
    """LV name -> (device, first extent, last extent) of each area, in the LV's order."""

    def outer(self, lv: str, device: str) -> list[tuple[int, int]]:
        """The byte ranges of ``device`` that hold ``lv``, in LV order, adjacent ones merged."""
        out: list[tuple[int, int]] = []
        for dev, first, last in self.ranges[lv]:
            if dev != device:
                continue
            at, n = self.pe_start[dev] + first * self.extent, (last - first + 1) * self.extent
            if out and out[-1][0] + out[-1][1] == at:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((at, n))
        return out


class Lvm:
    """LVM's commands, seeing only the given devices and writing nothing under /etc/lvm."""

    def __init__(self, *devices: str) -> None:
        self.devices = devices
        self.scope = ["--devices", ",".join(devices), "--config", LVM_CONFIG]

    def __call__(self, command: str, *args: str) -> str:
        return run(command, *self.scope, *args)

    def lv(self, *args: str) -> str:
        return self(*args[:1], "--driverloaded", "n", *args[1:])

    def report(self) -> Report:
        pvs = self(
            "pvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", ";",
            "-o", "pv_name,pe_start,vg_extent_size",
        )  # fmt: skip
        pe_start, extent = {}, 0
        for line in pvs.split():
            name, start, extent_size = line.split(";")
            pe_start[name] = int(start)
            extent = int(extent_size)
        lvs = self.lv(
            "lvs", "-a", "--noheadings", "--units", "b", "--nosuffix", "--separator", ";",
            "-o", "lv_name,lv_size,seg_start_pe,seg_pe_ranges", "--sort", "lv_name,seg_start_pe",
        )  # fmt: skip
        sizes: dict[str, int] = {}
        ranges: dict[str, list[tuple[str, int, int]]] = {}
        for line in lvs.strip().splitlines():
            name, size, _, pe_ranges = line.strip().split(";")
            name = name.strip("[]")
            sizes[name] = int(size)
            for area in pe_ranges.split():
                dev, first, last = re.fullmatch(r"(.+):(\d+)-(\d+)", area).groups()  # type: ignore[union-attr]
                ranges.setdefault(name, []).append((dev, int(first), int(last)))
        return Report(pe_start, extent, sizes, ranges)


def open_pv(device: str) -> tuple[Opened, int]:
    """rescue's reading of the PV on ``device``: probed, then opened."""
    with open(device, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        found = lvm.probe(f.read(PROBE_BYTES), f, size)
        assert found is not None
        return lvm.open_layer(f, size, found), size


@contextlib.contextmanager
def opened_pv(device: str) -> Iterator[tuple[Opened, int]]:
    """Like :func:`open_pv`, the device kept open for reading through the volumes."""
    with open(device, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        found = lvm.probe(f.read(PROBE_BYTES), f, size)
        assert found is not None
        yield lvm.open_layer(f, size, found), size


def read_file(path: str, ranges: list[tuple[int, int]]) -> bytes:
    with open(path, "rb") as f:
        parts = []
        for at, n in ranges:
            f.seek(at)
            parts.append(f.read(n))
        return b"".join(parts)


def make_filesystem(pv: str, at: int, size: int, mkfs: list[str], seed: int, where: Path) -> None:
    """A filesystem with files in it, made through a loop device over ``size`` bytes at ``at``."""
    with attached(pv, at, size) as part:
        run(*mkfs, part)
        where.mkdir()
        run("mount", part, str(where))
        try:
            fill_tree(where, seed, 4)
            for i in range(12):
                (where / f"gone{i}").write_bytes(random.Random(i).randbytes(50_000))
            os.sync()
            for i in range(0, 12, 2):
                (where / f"gone{i}").unlink()
        finally:
            run("umount", str(where))


def direct_allocation(pv: str, at: int, size: int) -> tuple[str, int, int, bytes]:
    """The used-block map of the filesystem at ``at``, read without rescue's LVM reader."""
    with attached(pv, at, size) as part, open(part, "rb") as f:
        a = allocation_for(f, size)
    return a.fstype, a.block_size, a.total_blocks, a.bitmap


def test_linear_lvs_are_read_through_the_pv_with_their_filesystems(tmp_path: Path) -> None:
    backing = sparse(tmp_path / "pv.img", 400 * MiB)
    with attached(backing) as pv:
        lvm_ = Lvm(pv)
        lvm_("pvcreate", "-q", pv)
        lvm_("vgcreate", "-q", "-s", "4m", "rlvm_lin", pv)
        lvm_.lv("lvcreate", "-an", "-Zn", "-q", "-L", "24m", "-n", "home", "rlvm_lin")
        lvm_.lv("lvcreate", "-an", "-Zn", "-q", "-L", "304m", "-n", "srv", "rlvm_lin")
        # grown after srv: home's second segment lies past it on the PV
        lvm_.lv("lvextend", "-q", "-L", "40m", "rlvm_lin/home")
        report = lvm_.report()
        home, srv = report.outer("home", pv), report.outer("srv", pv)
        assert len(home) == 2 and len(srv) == 1
        make_filesystem(pv, *home[0], ["mkfs.ext4", "-q", "-F"], 1, tmp_path / "h")
        make_filesystem(pv, *srv[0], ["mkfs.xfs", "-q", "-f"], 2, tmp_path / "s")
        tail = random.Random(3).randbytes(home[1][1])
        with open(pv, "r+b") as f:  # bytes of home's second segment, to read back
            f.seek(home[1][0])
            f.write(tail)
        expected_alloc = {
            "rlvm_lin/home": direct_allocation(pv, *home[0]),
            "rlvm_lin/srv": direct_allocation(pv, *srv[0]),
        }
        with opened_pv(pv) as (opened, size):
            volumes = {v.name: v for v in opened.volumes}
            assert {n: v.size for n, v in volumes.items()} == {
                f"rlvm_lin/{n}": s for n, s in report.sizes.items()
            }
            assert list(volumes["rlvm_lin/home"].outer_ranges(0, 40 * MiB)) == home
            assert list(volumes["rlvm_lin/srv"].outer_ranges(0, 304 * MiB)) == srv
            for name, vol in volumes.items():
                for at in range(0, vol.size, 8 * MiB):
                    ranges = list(vol.outer_ranges(at, 8 * MiB))
                    assert vol.pread(at, 8 * MiB) == read_file(pv, ranges), name
                alloc = allocation_for(binary_view(vol), vol.size)
                assert (alloc.fstype, alloc.block_size, alloc.total_blocks, alloc.bitmap) == (
                    expected_alloc[name]
                )
                assert not alloc.warnings
            # across the edge of home's two segments, and the short read at its end
            home_vol = volumes["rlvm_lin/home"]
            edge = home[0][1]
            assert home_vol.pread(edge - 1000, 5000) == read_file(
                pv, [(home[0][0] + edge - 1000, 1000), (home[1][0], 4000)]
            )
            assert home_vol.pread(home_vol.size - 10, 100) == tail[-10:]
            assert list(home_vol.outer_ranges(edge - 512, 1024)) == [
                (home[0][0] + edge - 512, 512),
                (home[1][0], 512),
            ]
            assert list(home_vol.outer_ranges(home_vol.size - 512, 4096)) == [
                (home[1][0] + home[1][1] - 512, 512)
            ]
    assert opened.whole == ()
    assert opened.metadata == ((0, report.pe_start[pv]),)
    assert dict(opened.details) == {
        "volume group": "rlvm_lin",
        "extent size": "4.0 MiB",
        "metadata copies read": "1 of 1",
        "read with": "rescue's LVM2 metadata reader",
    }
    kept = sum(n for _, n in opened.metadata) + sum(v.size for v in opened.volumes)
    assert kept == report.pe_start[pv] + (40 + 304) * MiB < size  # free extents: not kept


def test_an_lv_striped_over_two_pvs_is_stored_whole_on_each(tmp_path: Path) -> None:
    one, two = sparse(tmp_path / "a.img", 64 * MiB), sparse(tmp_path / "b.img", 64 * MiB)
    with attached(one) as pv1, attached(two) as pv2:
        lvm_ = Lvm(pv1, pv2)
        lvm_("pvcreate", "-q", pv1, pv2)
        lvm_("vgcreate", "-q", "-s", "1m", "rlvm_two", pv1, pv2)
        lvm_.lv("lvcreate", "-an", "-Zn", "-q", "-L", "6m", "-n", "solo", "rlvm_two", pv1)
        lvm_.lv(
            "lvcreate", "-an", "-Zn", "-q", "-i2", "-I64k", "-L", "16m", "-n", "wide", "rlvm_two"
        )
        report = lvm_.report()
        opened1, _ = open_pv(pv1)
        opened2, _ = open_pv(pv2)
    assert {pv1, pv2} == {dev for dev, _, _ in report.ranges["wide"]}
    assert [v.name for v in opened1.volumes] == ["rlvm_two/solo"]
    assert list(opened1.volumes[0].outer_ranges(0, 6 * MiB)) == report.outer("solo", pv1)
    assert opened2.volumes == ()
    for opened, pv in ((opened1, pv1), (opened2, pv2)):
        ((reason, ranges),) = opened.whole
        assert reason.startswith("rlvm_two/wide has extents on another physical volume too")
        assert "stored whole" in reason
        assert list(ranges) == report.outer("wide", pv)


VG_LAYOUTS = """
    logical_volumes {
        origin {
            id = "rescue-test-lv00-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 4
                type = "striped"
                stripe_count = 1
                stripes = ["pv0", 0]
            }
        }
        changes {
            id = "rescue-test-lv01-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 2
                type = "striped"
                stripe_count = 1
                stripes = ["pv0", 4]
            }
        }
        snapshot0 {
            id = "rescue-test-lv02-0000-0000-0000-000000"
            status = ["READ"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 4
                type = "snapshot"
                chunk_size = 8
                origin = "origin"
                cow_store = "changes"
            }
        }
        pool {
            id = "rescue-test-lv03-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 5
                type = "thin-pool"
                metadata = "pool_tmeta"
                pool = "pool_tdata"
                transaction_id = 1
                chunk_size = 128
                discards = "passdown"
                zero_new_blocks = 1
            }
        }
        thin1 {
            id = "rescue-test-lv04-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 20
                type = "thin"
                thin_pool = "pool"
                transaction_id = 0
                device_id = 1
            }
        }
        pool_tdata {
            id = "rescue-test-lv05-0000-0000-0000-000000"
            status = ["READ", "WRITE"]
            segment_count = 2
            segment1 {
                start_extent = 0
                extent_count = 3
                type = "striped"
                stripe_count = 1
                stripes = ["pv0", 6]
            }
            segment2 {
                start_extent = 3
                extent_count = 2
                type = "striped"
                stripe_count = 1
                stripes = ["pv0", 30]
            }
        }
        pool_tmeta {
            id = "rescue-test-lv06-0000-0000-0000-000000"
            status = ["READ", "WRITE"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 1
                type = "striped"
                stripe_count = 1
                stripes = ["pv0", 9]
            }
        }
        lvol0_pmspare {
            id = "rescue-test-lv07-0000-0000-0000-000000"
            status = ["READ", "WRITE"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 1
                type = "striped"
                stripe_count = 1
                stripes = ["pv0", 10]
            }
        }
        two {
            id = "rescue-test-lv08-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 6
                type = "striped"
                stripe_count = 2
                stripe_size = 128
                stripes = ["pv0", 12, "pv0", 20]
            }
        }
    }
"""
"""What lvcreate makes only with device-mapper: a snapshot ``changes`` of ``origin``, a thin
pool (its data LV in two pieces) with a thin volume, the pool metadata spare, and ``two``,
striped in 64 KiB chunks over two areas of one PV. Extents 11, 15-19 and 23-29 stay free."""


def restore_layouts(lvm_: Lvm, vg: str, tmp_path: Path) -> None:
    """The VG's metadata with :data:`VG_LAYOUTS` added, written by vgcfgrestore."""
    backup = tmp_path / "vg.txt"
    lvm_("vgcfgbackup", "-f", str(backup), vg)
    text = backup.read_text().rstrip()
    assert text.endswith("}") and "logical_volumes" not in text
    backup.write_text(text[:-1] + VG_LAYOUTS + "}\n")
    lvm_("vgcfgrestore", "--force", "-f", str(backup), vg)


def test_pools_snapshots_and_stripes_on_one_pv(tmp_path: Path) -> None:
    backing = sparse(tmp_path / "pv.img", 40 * MiB)
    with attached(backing) as pv:
        lvm_ = Lvm(pv)
        lvm_("pvcreate", "-q", pv)
        lvm_("vgcreate", "-q", "-s", "1m", "rlvm_kinds", pv)
        restore_layouts(lvm_, "rlvm_kinds", tmp_path)
        report = lvm_.report()
        assert report.ranges["two"] == [(pv, 12, 14), (pv, 20, 22)]
        areas = [report.pe_start[pv] + e * MiB for e in (12, 20)]
        data = [random.Random(n).randbytes(3 * MiB) for n in range(2)]
        with open(pv, "r+b") as f:
            for at, chunk in zip(areas, data, strict=True):
                f.seek(at)
                f.write(chunk)
        with opened_pv(pv) as (opened, _):
            volumes = {v.name: v for v in opened.volumes}
            assert {n: v.size for n, v in volumes.items()} == {
                "rlvm_kinds/origin": report.sizes["origin"],
                "rlvm_kinds/two": report.sizes["two"],
            }
            two = volumes["rlvm_kinds/two"]
            chunk = 64 * 1024
            # dm-stripe: chunk k of the LV is chunk k // 2 of stripe k % 2
            striped = b"".join(
                data[k % 2][k // 2 * chunk : (k // 2 + 1) * chunk] for k in range(6 * MiB // chunk)
            )
            assert two.pread(0, two.size) == striped
            assert two.pread(chunk - 7, 20) == striped[chunk - 7 : chunk + 13]
            assert list(two.outer_ranges(chunk - 7, chunk + 14)) == [
                (areas[0] + chunk - 7, 7),
                (areas[1], chunk),
                (areas[0] + chunk, 7),
            ]
            ranges = list(two.outer_ranges(0, two.size))
            assert len(ranges) == 6 * MiB // chunk
            assert sorted(ranges) == [
                (a + i * chunk, chunk) for a in areas for i in range(3 * MiB // chunk)
            ]
            origin = volumes["rlvm_kinds/origin"]
            assert list(origin.outer_ranges(0, origin.size)) == report.outer("origin", pv)
    whole = dict(opened.whole)
    pool = (
        "rlvm_kinds/pool is a thin pool (holding rlvm_kinds/thin1): stored whole, "
        "its data and metadata"
    )
    snapshot = (
        "rlvm_kinds/changes holds the changes of a snapshot of rlvm_kinds/origin "
        "(its copy-on-write store): stored whole"
    )
    spare = "rlvm_kinds/lvol0_pmspare is LVM's spare for repairing thin pool metadata: stored whole"
    assert set(whole) == {pool, snapshot, spare}
    tdata, tmeta = report.outer("pool_tdata", pv), report.outer("pool_tmeta", pv)
    assert len(tdata) == 2  # the two pieces of the pool's data
    assert list(whole[pool]) == [(tdata[0][0], tdata[0][1] + tmeta[0][1]), tdata[1]]
    assert list(whole[snapshot]) == report.outer("changes", pv)
    assert list(whole[spare]) == report.outer("lvol0_pmspare", pv)


def mda_text_end(device: str, mda: int) -> tuple[int, int]:
    """Where the current text of the metadata area at ``mda`` ends (relative), and its size."""
    with open(device, "rb") as f:
        f.seek(mda)
        header = f.read(512)
    (size,) = struct.unpack_from("<Q", header, 32)
    rel, text = struct.unpack_from("<QQ", header, 40)
    return rel + text, size


def test_a_wrapped_metadata_ring_and_the_copy_at_the_end(tmp_path: Path) -> None:
    backing = sparse(tmp_path / "pv.img", 48 * MiB)
    with attached(backing) as pv:
        lvm_ = Lvm(pv)
        lvm_(
            "pvcreate",
            "-q",
            "--metadatasize",
            "8k",
            "--dataalignment",
            "64k",
            "--pvmetadatacopies",
            "2",
            pv,
        )
        lvm_("vgcreate", "-q", "-s", "1m", "rlvm_ring", pv)
        wrapped = False
        for step in range(400):  # until the current text runs past the end of the ring
            name = f"lv{step % 9}"
            lvm_.lv("lvcreate", "-an", "-Zn", "-q", "-L", "1m", "-n", name, "rlvm_ring")
            lvm_.lv("lvrename", "-q", "rlvm_ring", name, f"renamed_{name}_{step}")
            if step % 9 == 8:
                for n in range(0, 9, 2):
                    lvm_.lv("lvremove", "-q", "-f", f"rlvm_ring/renamed_lv{n}_{step - 8 + n}")
            end, size = mda_text_end(pv, MDA)
            if end > size:
                wrapped = True
                break
        assert wrapped, "the metadata text never wrapped around its ring"
        report = lvm_.report()
        opened, size = open_pv(pv)
        # the first copy damaged: the one at the end still gives the layout
        with open(pv, "rb") as f:
            image = bytearray(f.read())
    assert {v.name for v in opened.volumes} == {f"rlvm_ring/{n}" for n in report.sizes}
    assert dict(opened.details)["metadata copies read"] == "2 of 2"
    (front, back) = opened.metadata
    assert front == (0, report.pe_start[pv])
    assert report.pe_start[pv] < back[0] < back[0] + back[1] <= size
    assert image[back[0] + 4 : back[0] + 20] == lvm.MDA_MAGIC
    image[MDA + 100] ^= 0xFF
    f = io.BytesIO(bytes(image))
    found = lvm.probe(bytes(image[:PROBE_BYTES]), f, size)
    assert found is not None
    again = lvm.open_layer(f, size, found)
    assert [v.name for v in again.volumes] == [v.name for v in opened.volumes]
    assert dict(again.details)["metadata copies read"] == "1 of 2"


# --- hostile metadata, on a real PV ---


@pytest.fixture(scope="module")
def real_pv(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small PV with a VG ``rlvm_bad`` and LVs ``one`` (2 extents) and ``two`` (3); its
    metadata area of 8 MiB holds texts far larger than LVM writes."""
    backing = sparse(tmp_path_factory.mktemp("lvm") / "pv.img", 16 * MiB)
    with attached(backing) as pv:
        lvm_ = Lvm(pv)
        lvm_("pvcreate", "-q", "--metadatasize", "8m", pv)
        lvm_("vgcreate", "-q", "-s", "1m", "rlvm_bad", pv)
        lvm_.lv("lvcreate", "-an", "-Zn", "-q", "-L", "2m", "-n", "one", "rlvm_bad")
        lvm_.lv("lvcreate", "-an", "-Zn", "-q", "-L", "3m", "-n", "two", "rlvm_bad")
    return backing.read_bytes()


def current_text(image: bytes) -> str:
    rel, size = struct.unpack_from("<QQ", image, MDA + 40)
    return image[MDA + rel : MDA + rel + size].rstrip(b"\0").decode()


def with_text(image: bytes, text: bytes) -> bytes:
    """``image`` whose metadata area holds ``text`` at the start of its ring (checksums made
    right)."""
    out = bytearray(image)
    raw = text + b"\0"
    out[MDA + 512 : MDA + 512 + len(raw)] = raw
    struct.pack_into("<QQI", out, MDA + 40, 512, len(raw), lvm.lvm_crc(raw))
    struct.pack_into("<I", out, MDA, lvm.lvm_crc(bytes(out[MDA + 4 : MDA + 512])))
    return bytes(out)


def open_image(image: bytes) -> Opened:
    f = io.BytesIO(image)
    found = lvm.probe(image[:PROBE_BYTES], f, len(image))
    assert isinstance(found, Container)
    return lvm.open_layer(f, len(image), found)


def edited(image: bytes, old: str, new: str, count: int = 1) -> bytes:
    text = current_text(image)
    assert old in text
    return with_text(image, text.replace(old, new, count).encode())


def test_the_real_pv_reads(real_pv: bytes) -> None:
    opened = open_image(real_pv)
    assert [(v.name, v.size) for v in opened.volumes] == [
        ("rlvm_bad/one", 2 * MiB),
        ("rlvm_bad/two", 3 * MiB),
    ]


SEGMENT_TWO = 'stripes = [\n"pv0", 2\n]'
VISIBLE = 'status = ["READ", "WRITE", "VISIBLE"]'
HOSTILE = {
    "garbage": (None, "\xff\xfe garbage {{{ ]]] ==", "LVM metadata is damaged"),
    "truncated": ("half", "", "is not closed"),
    "endless string": ("+", 'broken = "no end\n', "a string that does not end"),
    "huge number": ("extent_count = 3", "extent_count = " + "9" * 30, "too large"),
    "5000 digits": ("extent_count = 3", "extent_count = " + "9" * 5000, "too large"),
    "huge extent size": ("extent_size = 2048", f"extent_size = {(1 << 63) - 1}", "impossible"),
    "deep nesting": ("", "a {\n" * 100_000, "nested deeper"),
    "huge name": ("", "x" * 1_000_000 + " = 1\n", "longer than LVM allows"),
    "two equals": ("seqno = ", "seqno = seqno = ", "where a value belongs"),
    "past the pv end": (SEGMENT_TWO, 'stripes = ["pv0", 100000]', "reaches extent 100003"),
    "overlapping lvs": (SEGMENT_TWO, 'stripes = ["pv0", 1]', "given to both one and two"),
    "unknown pv": (SEGMENT_TWO, 'stripes = ["pv7", 2]', "pv7, which the group"),
    "gap between segments": ("start_extent = 0", "start_extent = 5", "starts at extent 5"),
    "negative extent": ('"pv0", 2', '"pv0", -2', "starts at extent -2"),
    "more extents than the pv": ("pe_count = ", "pe_count = 1000000", "which has 16777216 bytes"),
    "stripe count": ("stripe_count = 1", "stripe_count = 2", "says 2 stripes but lists 1"),
    "two vgs": ("contents = ", "other_vg { }\ncontents = ", "2 volume groups"),
    "not lvm text": ('"Text Format Volume Group"', '"Something else"', "not a version 1"),
    "status of numbers": (VISIBLE, "status = [1, 2]", "list of words"),
}
"""Case -> (text replaced once: None for all of it, "half" to cut it, "" to put before it,
"+" to put after it;
what replaces it; what the error says)."""


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metadata_text_gives_a_clear_error(real_pv: bytes, case: str) -> None:
    old, new, message = HOSTILE[case]
    text = current_text(real_pv)
    if old is None:
        text = new
    elif old == "half":
        text = text[: text.index("\n", len(text) // 2)]
    elif not old:
        text = new + text
    elif old == "+":
        text += new
    else:
        assert old in text
        text = text.replace(old, new, 1)
    image = with_text(real_pv, text.encode())
    started = time.monotonic()
    with pytest.raises(FilesystemError, match=re.escape(message)):
        open_image(image)
    assert time.monotonic() - started < 5


def lv_text(name: str, segment_type: str, *uses: tuple[str, str]) -> str:
    """An LV of one segment of ``segment_type`` built on other LVs (key, LV name)."""
    refs = "".join(f'{key} = "{lv}"\n' for key, lv in uses)
    segment = f'start_extent = 0\nextent_count = 1\ntype = "{segment_type}"\n{refs}'
    return f"{name} {{\n{VISIBLE}\nsegment_count = 1\nsegment1 {{\n{segment}}}\n}}\n"


@pytest.mark.parametrize(
    ("lvs", "message"),
    [
        (lv_text("p", "thin-pool", ("pool", "p"), ("metadata", "m")), "built on itself"),
        (
            lv_text("p", "thin-pool", ("pool", "q"), ("metadata", "m"))
            + lv_text("q", "cache", ("origin", "p"), ("cache_pool", "m")),
            "in a loop",
        ),
    ],
    ids=["lv built on itself", "two lvs built on each other"],
)
def test_lvs_built_on_each_other_in_a_loop(real_pv: bytes, lvs: str, message: str) -> None:
    image = edited(real_pv, "logical_volumes {\n", "logical_volumes {\n" + lvs)
    with pytest.raises(FilesystemError, match=message):
        open_image(image)


def test_damaged_areas_and_headers(real_pv: bytes) -> None:
    text = current_text(real_pv)
    size = len(real_pv)

    def fails(image: bytes, message: str, length: int | None = None) -> None:
        f = io.BytesIO(image[:length] if length else image)
        found = lvm.probe(image[:PROBE_BYTES], f, length or size)
        assert found is not None
        with pytest.raises(FilesystemError, match=re.escape(message)):
            lvm.open_layer(f, length or size, found)

    broken = bytearray(with_text(real_pv, text.encode()))
    (rel,) = struct.unpack_from("<Q", broken, MDA + 40)
    broken[MDA + rel + 100] ^= 1  # inside the text: its checksum no longer holds
    fails(bytes(broken), "damaged (checksum mismatch)")
    header = bytearray(real_pv)
    header[MDA + 100] ^= 1
    fails(bytes(header), "area header at byte 4096 is damaged")
    outside = bytearray(real_pv)
    struct.pack_into("<Q", outside, MDA + 48, 1 << 40)
    struct.pack_into("<I", outside, MDA, lvm.lvm_crc(bytes(outside[MDA + 4 : MDA + 512])))
    fails(bytes(outside), "outside its")
    label = bytearray(real_pv)
    label[512 + 100] ^= 1
    fails(bytes(label), "label sector is damaged")
    fails(real_pv, "which does not fit on the", length=512 * 1024)  # an image cut short
    fails(real_pv, "which has 15728640 bytes", length=15 * MiB)
    uuid = lvm.read_label(io.BytesIO(real_pv), size).uuid
    other = ("y" if uuid[0] == "x" else "x") + uuid[1:]  # a UUID may well start with x
    fails(edited(real_pv, uuid, other), f"does not list this physical volume ({uuid})")


def test_random_damage_is_an_error_or_a_reading_never_a_hang(real_pv: bytes) -> None:
    text = current_text(real_pv).encode()
    rng = random.Random(15)
    started = time.monotonic()
    outcomes = {"read": 0, "refused": 0}
    for _ in range(300):
        mutated = bytearray(text)
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(mutated))
            choice = rng.randrange(3)
            if choice == 0:
                mutated[at] = rng.choice(b'{}[]=,"#\n 0123456789abc\\')
            elif choice == 1:
                del mutated[at : at + rng.randrange(1, 40)]
            else:
                mutated[at:at] = mutated[rng.randrange(len(mutated)) :][: rng.randrange(1, 80)]
        try:
            opened = open_image(with_text(real_pv, bytes(mutated)))
        except FilesystemError:
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        for vol in opened.volumes:  # what reads must stay on the PV
            for at, n in vol.outer_ranges(0, vol.size):
                assert at >= 0 and at + n <= len(real_pv)
    assert outcomes["read"] and outcomes["refused"]
    assert time.monotonic() - started < 60


def test_an_lv_on_another_lv_is_stored_whole_with_what_it_lies_on(real_pv: bytes) -> None:
    image = edited(real_pv, SEGMENT_TWO, 'stripes = ["one", 0]')  # as pvmove leaves an LV
    opened = open_image(image)
    assert opened.volumes == ()
    ((reason, ranges),) = opened.whole
    assert (
        reason
        == "rlvm_bad/two lies on other LVs (rlvm_bad/one), as while pvmove runs: stored whole"
    )
    pe_start = opened.metadata[0][1]
    assert ranges == ((pe_start, 2 * MiB),)  # one's extents; two's own are none now


def test_an_orphan_pv_and_a_pv_without_metadata(tmp_path: Path) -> None:
    backing = sparse(tmp_path / "pv.img", 16 * MiB)
    with attached(backing) as pv:
        lvm_ = Lvm(pv)
        lvm_("pvcreate", "-q", pv)
        pe_start = lvm_.report().pe_start[pv]
        orphan, _ = open_pv(pv)
        lvm_("pvremove", "-q", pv)
        lvm_("pvcreate", "-q", "--metadatacopies", "0", pv)
        with pytest.raises(FilesystemError, match="keeps no metadata area"):
            open_pv(pv)
    assert (orphan.volumes, orphan.whole) == ((), ())
    assert orphan.metadata == ((0, pe_start),)
    assert dict(orphan.details)["volume group"].startswith("none (an orphan physical volume")


def test_long_chains_and_crowded_pools_cost_their_length(real_pv: bytes) -> None:
    """40,000 LVs each built on the next, and a pool of 20,000 thin volumes: read in one pass."""
    chain = "".join(
        lv_text(f"c{i}", "cache", ("origin", f"c{i + 1}"), ("cache_pool", "none"))
        for i in range(40_000)
    )
    chain = chain.replace('"c40000"', '"one"')  # the last one lies on LV one
    started = time.monotonic()
    opened = open_image(edited(real_pv, "logical_volumes {\n", "logical_volumes {\n" + chain))
    assert time.monotonic() - started < 20
    ((reason, _),) = opened.whole
    assert reason == "rlvm_bad/c0 is a cached LV (cache): stored whole, with its cache"
    assert [v.name for v in opened.volumes] == ["rlvm_bad/two"]
    thin = "".join(
        lv_text(f"t{i}", "thin", ("thin_pool", "pool")) for i in range(20_000)
    ) + lv_text("pool", "thin-pool", ("pool", "one"), ("metadata", "two"))
    started = time.monotonic()
    opened = open_image(edited(real_pv, "logical_volumes {\n", "logical_volumes {\n" + thin))
    assert time.monotonic() - started < 20
    ((reason, _),) = opened.whole
    assert reason == (
        "rlvm_bad/pool is a thin pool (holding rlvm_bad/t0, rlvm_bad/t1, rlvm_bad/t2, "
        "rlvm_bad/t3, rlvm_bad/t4 and 19995 more): stored whole, its data and metadata"
    )
