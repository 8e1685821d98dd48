"""One home per filesystem: the registry answers every filesystem question.

Outside rescue/filesystems/ no module compares a filesystem name (or a storage
kind) with a literal; every registered filesystem declares each operation once,
supported or with a reason; an unsupported operation says so in words; and on
small real filesystems the registry's minimum size, check and repair agree with
what their tools do.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import pkgutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, RecordingProgress, fill_tree, run, tree_digest

import rescue.filesystems
from rescue.errors import EXIT_REFUSED, UnsupportedOperationError
from rescue.filesystems import registry
from rescue.filesystems.btrfs import BTRFS
from rescue.filesystems.exfat import EXFAT
from rescue.filesystems.ext import EXT
from rescue.filesystems.interface import Filesystem, Op, Reasons
from rescue.filesystems.ntfs import NTFS

PACKAGE = Path(__file__).resolve().parent.parent / "rescue"
FILESYSTEMS = PACKAGE / "filesystems"
MiB = 1 << 20

FS_NAMES = frozenset(
    {"ext2", "ext3", "ext4", "ntfs", "ntfs3", "vfat", "fat", "fat12", "fat16", "fat32",
     "msdos", "exfat", "xfs", "btrfs", "swap"}
)  # fmt: skip
"""Filesystem names that only rescue/filesystems/ may spell."""
STORAGE_KINDS = frozenset({"partclone", "dd", "none"})
"""``stored_as`` values: compared through rescue.image.manifest.StoredAs only."""


# --- (a) no filesystem name outside rescue/filesystems/ ---------------------------------


def _literal(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _members(node: ast.AST) -> list[str]:
    """String literals of ``node`` itself or of the tuple/list/set literal it is."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for e in node.elts if (v := _literal(e)) is not None]
    value = _literal(node)
    return [] if value is None else [value]


def _patterns(pattern: ast.pattern) -> Iterator[str]:
    if isinstance(pattern, ast.MatchValue) and (v := _literal(pattern.value)) is not None:
        yield v
    elif isinstance(pattern, ast.MatchOr):
        for p in pattern.patterns:
            yield from _patterns(p)
    elif isinstance(pattern, ast.MatchAs) and pattern.pattern is not None:
        yield from _patterns(pattern.pattern)


def name_literals(source: str, filename: str = "<test>") -> list[tuple[int, str, str]]:
    """(line, what, literal) of every filesystem name compared, matched or used as a key."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            if not any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                continue
            found.extend(
                (node.lineno, "comparison", v)
                for side in (node.left, *node.comparators)
                for v in _members(side)
                if v in FS_NAMES or v in STORAGE_KINDS
            )
        elif isinstance(node, ast.match_case):
            found.extend(
                (node.pattern.lineno, "match case", v)
                for v in _patterns(node.pattern)
                if v in FS_NAMES or v in STORAGE_KINDS
            )
        elif isinstance(node, ast.Dict):
            found.extend(
                (node.lineno, "dict key", v)
                for k in node.keys
                if (v := _literal(k)) is not None and v in FS_NAMES
            )
        elif isinstance(node, ast.Set):
            found.extend(
                (node.lineno, "set member", v)
                for e in node.elts
                if (v := _literal(e)) is not None and v in FS_NAMES
            )
    return found


def test_the_name_finder_finds_each_kind() -> None:
    source = (
        'if fs == "ext4": pass\n'
        'if "ntfs" != fs: pass\n'
        'if fs in ("xfs", "btrfs"): pass\n'
        'if fs not in ["vfat"]: pass\n'
        'if kind == "dd": pass\n'
        'match fs:\n'
        '    case "exfat" | "swap":\n'
        '        pass\n'
        'OPTIONS = {"fat32": 1}\n'
        'NAMES = {"msdos"}\n'
        'fine = {"swap-active": "swap"}\n'
        'if fs == "ext4-ish" or fs is None: pass\n'
    )  # fmt: skip
    found = name_literals(source)
    assert [v for _, _, v in found] == [
        "ext4", "ntfs", "xfs", "btrfs", "vfat", "dd", "exfat", "swap", "fat32", "msdos",
    ]  # fmt: skip
    assert {what for _, what, _ in found} == {"comparison", "match case", "dict key", "set member"}


def test_no_module_outside_filesystems_names_a_filesystem() -> None:
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if FILESYSTEMS in path.parents:
            continue
        for line, what, value in name_literals(path.read_text(), str(path)):
            offences.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what} with {value!r}")
    assert offences == [], "ask rescue.filesystems.registry instead:\n" + "\n".join(offences)


# --- (b) every entry declares every operation -----------------------------------------

NOWHERE = "/nonexistent/rescue-registry-test"

CALLS: dict[Op, Callable[[Filesystem], object]] = {
    Op.ALLOCATION: lambda fs: fs.read_allocation(io.BytesIO(), 0),
    Op.BROWSE: lambda fs: fs.mount_at(NOWHERE, NOWHERE),
    Op.MOUNT_RW: lambda fs: fs.mount_at(NOWHERE, NOWHERE, writable=True),
    Op.CHECK: lambda fs: fs.check(NOWHERE),
    Op.REPAIR: lambda fs: fs.repair(NOWHERE),
    Op.GROW: lambda fs: fs.grow(NOWHERE, MiB),
    Op.SHRINK: lambda fs: fs.shrink(NOWHERE, MiB),
    Op.REBUILD: lambda fs: fs.rebuild(NOWHERE, NOWHERE, RecordingProgress(), threading.Event()),
    Op.MINIMUM: lambda fs: fs.minimum_size(NOWHERE),
    Op.NEW_ID: lambda fs: fs.new_id(NOWHERE),
    Op.DAMAGE: lambda fs: fs.files_at(NOWHERE, [(0, 512)], 512),
    Op.SET_START: lambda fs: fs.record_start(-1, 0, MiB, 2048),
    Op.CREATE: lambda fs: fs.create(NOWHERE, offset=0, size=MiB, uuid=None, label=None),
}
"""One call of each operation, with arguments that touch nothing if it is refused."""


def test_every_operation_has_a_call_here() -> None:
    assert set(CALLS) == set(Op)


@pytest.mark.parametrize("fs", registry.all_filesystems(), ids=repr)
def test_each_operation_is_declared_once(fs: Filesystem) -> None:
    assert fs.declaration_problems() == []
    assert fs.names and fs.human_name
    for op in Op:
        if fs.supports(op):
            assert fs.implements(op), f"{fs!r} says it supports {op} but does not implement it"
        else:
            reason = fs.unsupported[op]
            assert len(reason) > 20 and reason.endswith("."), f"{fs!r} {op}: {reason!r}"


@pytest.mark.parametrize("fs", registry.all_filesystems(), ids=repr)
def test_an_unsupported_operation_says_why(fs: Filesystem) -> None:
    for op in Op:
        if fs.supports(op):
            continue
        with pytest.raises(UnsupportedOperationError) as refused:
            CALLS[op](fs)
        assert refused.value.message == fs.unsupported[op]
        assert refused.value.exit_code == EXIT_REFUSED
        if op in (Op.BROWSE, Op.MOUNT_RW):
            with (
                pytest.raises(UnsupportedOperationError),
                fs.mounted(NOWHERE, writable=op is Op.MOUNT_RW),
            ):
                pass


def test_exfat_cannot_be_shrunk_and_says_so() -> None:
    with pytest.raises(UnsupportedOperationError, match="exFAT cannot be shrunk"):
        EXFAT.shrink(NOWHERE, MiB)
    assert not EXFAT.restores_smaller and not EXFAT.can_grow


def test_the_names_of_each_filesystem() -> None:
    expect = {
        "ext2": "ext2", "ext3": "ext3", "ext4": "ext4", "ntfs": "ntfs", "ntfs3": "ntfs",
        "vfat": "vfat", "fat12": "vfat", "fat16": "vfat", "fat32": "vfat", "fat": "vfat",
        "msdos": "vfat", "exfat": "exfat", "xfs": "xfs", "btrfs": "btrfs", "swap": "swap",
        "dd": "dd",
    }  # fmt: skip
    for name, canonical in expect.items():
        fs = registry.get(name)
        assert fs is not None, name
        assert registry.canonical(name) == canonical
    assert registry.get("ext4") is registry.get("ext2") is EXT
    assert registry.get("hfsplus") is None and registry.get(None) is None
    assert registry.canonical("hfsplus") == "hfsplus"
    with pytest.raises(UnsupportedOperationError, match="hfsplus"):
        registry.require("hfsplus")
    fat = registry.for_mount_type("fuse.fusefat")
    assert fat is registry.get("vfat") and fat is not None and fat.max_file_size == 4 * 1024**3 - 1


def test_capabilities_as_operations_ask_them() -> None:
    def of(name: str) -> Filesystem:
        return registry.require(name)

    names = ("ext4", "ntfs", "btrfs", "xfs", "vfat", "exfat", "swap", "dd")
    assert [n for n in names if of(n).restores_smaller] == ["ext4", "ntfs", "btrfs", "xfs"]
    assert [n for n in names if of(n).can_grow] == ["ext4", "ntfs", "btrfs", "xfs", "vfat"]
    assert of("xfs").can_rebuild and not of("xfs").can_shrink
    assert of("ntfs").records_start and not of("ext4").records_start
    assert of("swap").recreated and not of("swap").imaged
    assert of("dd").raw and of("dd").imaged
    assert [n for n in names if of(n).linux_root] == ["ext4", "btrfs", "xfs"]
    assert of("vfat").esp and not of("exfat").esp


def test_every_filesystem_module_entry_is_registered() -> None:
    entries = []
    for info in pkgutil.iter_modules(rescue.filesystems.__path__):
        module = importlib.import_module(f"rescue.filesystems.{info.name}")
        entries += [v for v in vars(module).values() if isinstance(v, Filesystem)]
    assert entries
    assert {id(e) for e in entries} == {id(fs) for fs in registry.all_filesystems()}


class _Undeclared(Filesystem):
    names = ("test-undeclared",)
    human_name = "nothing"
    unsupported: ClassVar[Reasons] = {Op.GROW: "It cannot grow, and says so."}

    def shrink(self, dev: str, size: int) -> None:
        pass


class _Twice(Filesystem):
    names = ("test-twice",)
    human_name = "twice"
    unsupported: ClassVar[Reasons] = dict.fromkeys(Op, "Not here, for a test.")

    def grow(self, dev: str, size: int) -> str | None:
        return None


def test_the_registry_refuses_a_half_declared_entry() -> None:
    with pytest.raises(TypeError, match="allocation is neither implemented nor given a reason"):
        registry.register(_Undeclared())
    with pytest.raises(TypeError, match="grow is implemented and declared unsupported"):
        registry.register(_Twice())
    assert registry.get("test-undeclared") is None and registry.get("test-twice") is None


# --- (c) the registry on small real filesystems -------------------------------------------


@contextlib.contextmanager
def mounted(dev: str, where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    run("mount", dev, str(where))
    try:
        yield where
    finally:
        run("umount", str(where))


def _size(dev: str) -> int:
    return int(run("blockdev", "--getsize64", dev).strip())


@need("root", "loop")
def test_ext4_minimum_shrink_and_the_e2fsck_rule(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    disk = loop_disk_factory(96, None, [PartSpec(None, "ext4")])
    dev = disk.path
    with mounted(dev, tmp_path / "m") as mnt:
        fill_tree(mnt, seed=5, approx_mib=12)
        (mnt / "victim").write_bytes(b"x" * 8192)
        digest = tree_digest(mnt)
        st = os.statvfs(mnt)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert EXT.check(dev).ok

    least = EXT.minimum_size(dev)
    assert used < least < _size(dev)
    EXT.shrink(dev, -(-least // MiB) * MiB)
    assert EXT.check(dev).ok
    with mounted(dev, tmp_path / "m") as mnt:
        assert tree_digest(mnt) == digest

    # an inode cleared behind the filesystem's back: check says so, repair mends it
    inode = run("debugfs", "-R", "stat /victim", dev).split("Inode:", 1)[1].split()[0]
    run("debugfs", "-w", "-R", f"clri <{inode}>", dev)
    found = EXT.check(dev)
    assert not found.ok and found.code == 4 and found.tool == "e2fsck"
    mended = EXT.repair(dev)
    assert mended.ok and mended.code == 1  # "errors corrected" is a good result
    assert EXT.check(dev).ok


@need("root", "loop")
def test_btrfs_minimum_and_check(loop_disk_factory: DiskFactory, tmp_path: Path) -> None:
    disk = loop_disk_factory(320, None, [PartSpec(None, "btrfs")])
    dev = disk.path
    with mounted(dev, tmp_path / "m") as mnt:
        fill_tree(mnt, seed=6, approx_mib=16)
    least = BTRFS.minimum_size(dev)
    assert 16 * MiB < least < _size(dev)
    assert BTRFS.check(dev).ok
    assert not BTRFS.can_rebuild and BTRFS.can_shrink


@need("root", "loop")
def test_ntfs_minimum_and_check(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, None, [PartSpec(None, "ntfs")])
    dev = disk.path
    least = NTFS.minimum_size(dev)
    assert MiB < least < _size(dev)
    result = NTFS.check(dev)
    assert result.ok, result.output
    with pytest.raises(UnsupportedOperationError, match="chkdsk"):
        NTFS.repair(dev)
