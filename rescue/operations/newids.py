"""A restored disk with a new identity (``--new-ids``): for a clone next to the original.

The disk GUID and partition GUIDs (or the MBR disk id) and every filesystem's
UUID/serial are replaced by new random ones; then each restored Linux system's
``etc/fstab``, ``etc/crypttab`` and boot configuration (GRUB, systemd-boot
entries, kernel command line), and the GRUB files on an EFI system partition,
are rewritten to name the new values. Two machines on one network, or two disks
in one machine, then no longer share UUIDs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from rescue.filesystems import registry
from rescue.filesystems.interface import Op
from rescue.operations.bootcheck import identities
from rescue.progress import ProgressReporter
from rescue.system import output, run, which

_BOOT_FILES = (
    "etc/fstab", "etc/crypttab", "etc/default/grub", "etc/kernel/cmdline",
    "boot/grub/grub.cfg", "boot/grub2/grub.cfg",
)  # fmt: skip


@dataclass
class NewIds:
    replaced: dict[str, str]
    """Old value -> new value (filesystem UUIDs and serials, partition GUIDs)."""
    files: list[str]
    """Files rewritten to match, as "partition:path"."""


def _new_fs_id(node: str, fstype: str | None) -> str | None:
    """Give the filesystem on ``node`` a new random UUID/serial; returns it (None: unchanged)."""
    fs = registry.get(fstype)
    if fs is None or not fs.supports(Op.NEW_ID):
        return None
    return fs.new_id(node)


def _swap(text: str, replaced: dict[str, str]) -> str:
    for old, value in replaced.items():
        text = text.replace(old, value).replace(old.lower(), value.lower())
    return text


def _rewrite(path: Path, replaced: dict[str, str]) -> bool:
    text = path.read_text(errors="surrogateescape")
    new = _swap(text, replaced)
    if new == text:
        return False
    path.write_text(new, errors="surrogateescape")
    return True


def _rewrite_esp(node: str, replaced: dict[str, str]) -> list[str]:
    """GRUB's small config files on an EFI system partition (FAT, through mtools)."""
    if not which("mcopy"):
        return []
    listing = run(["mdir", "-i", node, "-/", "-b", "::/EFI"], check=False)
    names = [
        n for n in listing.stdout.decode(errors="replace").split()
        if n.lower().endswith("grub.cfg")
    ]  # fmt: skip
    done = []
    for name in names:
        inner = name.replace("::", "", 1) if name.startswith("::") else name
        text = output(["mtype", "-i", node, f"::{inner}"])
        new = _swap(text, replaced)
        if new != text:
            run(["mcopy", "-o", "-i", node, "-", f"::{inner}"], input=new.encode())
            done.append(f"{node}:{inner}")
    return done


def give_new_ids(
    disk: str, table: str | None, parts: list[tuple[str, str | None]], progress: ProgressReporter
) -> NewIds:
    """New disk, partition and filesystem identities on ``disk`` and its ``parts`` (node, fs)."""
    before = {node: identities(node) for node, _ in parts}
    if table == "gpt":
        run(["sgdisk", "-G", disk])
    elif table == "dos":
        run(["sfdisk", "--disk-id", disk, f"0x{secrets.token_hex(4)}"])
    run(["partx", "-u", disk], check=False)
    replaced: dict[str, str] = {}
    for node, fstype in parts:
        old = before[node].get("UUID")
        new = _new_fs_id(node, fstype)
        if old and new:
            replaced[old] = new
    for node, _ in parts:
        old_part = before[node].get("PARTUUID")
        new_part = identities(node).get("PARTUUID")
        if old_part and new_part and old_part != new_part:
            replaced[old_part] = new_part
    files = []
    for node, fstype in parts:
        fs = registry.get(fstype)
        if fs is None:
            continue
        if fs.linux_root:
            with fs.mounted(node, writable=True) as root:
                for rel in _BOOT_FILES:
                    f = root / rel
                    if f.is_file() and not f.is_symlink() and _rewrite(f, replaced):
                        files.append(f"{node}:/{rel}")
                entries = root / "boot" / "loader" / "entries"
                if entries.is_dir():
                    files.extend(
                        f"{node}:/{f.relative_to(root)}"
                        for f in sorted(entries.glob("*.conf"))
                        if _rewrite(f, replaced)
                    )
        elif fs.esp:
            files += _rewrite_esp(node, replaced)
    progress.note(
        f"New identities on {disk}: {len(replaced)} UUID(s)/GUID(s) replaced; "
        f"rewritten to match: {', '.join(files) or 'no configuration file named them'}."
    )
    return NewIds(replaced, files)
