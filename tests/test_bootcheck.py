"""After a restore, the restored system's fstab is checked against the target's filesystems."""

from __future__ import annotations

from pathlib import Path

from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, RecordingProgress, run

from rescue.cli import main
from rescue.operations.bootcheck import fstab_specs
from rescue.operations.restore import plan_restore, restore


def test_fstab_entries_by_identity_are_found() -> None:
    text = """
# a comment
UUID=1234-ABCD  /boot/efi vfat umask=0077 0 1
/dev/disk/by-uuid/0f0e-1111 / ext4 defaults 0 1
PARTUUID="aa-bb" /home ext4 defaults 0 2
LABEL=DATA /data xfs defaults 0 0
/dev/sda3 /old ext4 defaults 0 0
proc /proc proc defaults 0 0
server:/x /net nfs defaults 0 0
"""
    assert fstab_specs(text) == [
        ("UUID", "1234-ABCD", "/boot/efi"),
        ("UUID", "0f0e-1111", "/"),
        ("PARTUUID", "aa-bb", "/home"),
        ("LABEL", "DATA", "/data"),
    ]


@need("root", "loop", "udev")
def test_restore_reports_fstab_entries_missing_on_the_target(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src = loop_disk_factory(160, "gpt", [PartSpec(80, "ext4", label="ROOT"),
                                         PartSpec(None, "ext4", label="DATA")])  # fmt: skip
    root_uuid = run("blkid", "-s", "UUID", "-o", "value", src.parts[0]).strip()
    data_partuuid = run("blkid", "-p", "-s", "PART_ENTRY_UUID", "-o", "value", src.parts[1])
    mnt = src.mount(0, tmp_path / "root")
    (mnt / "etc").mkdir()
    (mnt / "etc" / "fstab").write_text(
        f"UUID={root_uuid} / ext4 defaults 0 1\n"
        f"PARTUUID={data_partuuid.strip()} /data ext4 defaults 0 2\n"
        "LABEL=DATA /data2 ext4 defaults 0 2\n"
        "UUID=0badc0de-0000-4000-8000-000000000000 /home ext4 defaults 0 2\n"
    )
    src.umount(mnt)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    target = loop_disk_factory(160, None, [])
    notes = RecordingProgress()
    restore(plan_restore(image, target.path), confirmed=True, progress=notes)
    warnings = [n for n in notes.notes if "fstab" in n]
    assert len(warnings) == 1, notes.notes
    assert warnings[0].startswith("WARNING") and "UUID=0badc0de" in warnings[0]
    assert root_uuid not in warnings[0] and "LABEL=DATA" not in warnings[0]
