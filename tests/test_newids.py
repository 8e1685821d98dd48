"""Restore with --new-ids: a clone that shares no identity with the original, and still boots."""

from __future__ import annotations

from pathlib import Path

from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, RecordingProgress, run

from rescue.operations.restore import plan_restore, restore

pytestmark = need("root", "loop", "udev")


def ids(dev: str) -> tuple[str, str]:
    uuid = run("blkid", "-p", "-s", "UUID", "-o", "value", dev).strip()
    part = run("blkid", "-p", "-s", "PART_ENTRY_UUID", "-o", "value", dev).strip()
    return uuid, part


def test_new_ids_everywhere_and_the_config_follows(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src = loop_disk_factory(520, "gpt", [PartSpec(40, "vfat", label="ESP"),
                                         PartSpec(120, "ext4", label="root"),
                                         PartSpec(None, "xfs", label="data")])  # fmt: skip
    esp_uuid, _ = ids(src.parts[0])
    root_uuid, _ = ids(src.parts[1])
    data_uuid, data_part = ids(src.parts[2])
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(f"search --no-floppy --fs-uuid --set=root {root_uuid}\n")
    run("mmd", "-i", src.parts[0], "::/EFI", "::/EFI/debian")
    run("mcopy", "-i", src.parts[0], str(cfg), "::/EFI/debian/grub.cfg")
    mnt = src.mount(1, tmp_path / "root")
    (mnt / "etc").mkdir()
    (mnt / "etc" / "fstab").write_text(
        f"UUID={root_uuid} / ext4 defaults 0 1\n"
        f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n"
        f"PARTUUID={data_part} /data xfs defaults 0 2\n"
    )
    (mnt / "boot" / "grub").mkdir(parents=True)
    (mnt / "boot" / "grub" / "grub.cfg").write_text(f"linux /vmlinuz root=UUID={root_uuid} ro\n")
    (mnt / "keep.txt").write_text("unchanged\n")
    src.umount(mnt)
    image = tmp_path / "image"
    from rescue.cli import main  # noqa: PLC0415

    assert main(["capture", src.path, str(image)]) == 0

    target = loop_disk_factory(520, None, [])
    notes = RecordingProgress()
    restore(plan_restore(image, target.path, new_ids=True), confirmed=True, progress=notes)
    target.rescan()
    new_esp, _ = ids(target.parts[0])
    new_root, _ = ids(target.parts[1])
    new_data, new_data_part = ids(target.parts[2])
    assert {new_esp, new_root, new_data}.isdisjoint({esp_uuid, root_uuid, data_uuid})
    assert new_data_part != data_part
    run("e2fsck", "-fn", target.parts[1])
    run("xfs_repair", "-n", target.parts[2])
    run("fsck.vfat", "-n", target.parts[0])
    mnt = target.mount(1, tmp_path / "t", "ro")
    fstab = (mnt / "etc" / "fstab").read_text()
    assert new_root in fstab and new_esp in fstab and new_data_part in fstab
    assert root_uuid not in fstab and esp_uuid not in fstab and data_part not in fstab
    assert f"root=UUID={new_root}" in (mnt / "boot" / "grub" / "grub.cfg").read_text()
    assert (mnt / "keep.txt").read_text() == "unchanged\n"
    target.umount(mnt)
    esp_cfg = run("mtype", "-i", target.parts[0], "::/EFI/debian/grub.cfg")
    assert new_root in esp_cfg and root_uuid not in esp_cfg
    # and the check after the restore finds every filesystem the new fstab names
    assert any(n.startswith("The fstab on") and "all 3" in n for n in notes.notes), notes.notes


def test_uefi_fallback_loader_is_made_and_firmware_reported_honestly(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """No UEFI firmware variables on this machine: the fallback path is made and it says so."""
    from rescue.operations.uefi import firmware_writable  # noqa: PLC0415

    src = loop_disk_factory(160, "gpt", [PartSpec(40, "vfat", label="ESP"),
                                         PartSpec(None, "ext4")])  # fmt: skip
    shim = tmp_path / "shimx64.efi"
    shim.write_bytes(b"MZ fake shim " * 100)
    grub = tmp_path / "grubx64.efi"
    grub.write_bytes(b"MZ fake grub " * 100)
    run("mmd", "-i", src.parts[0], "::/EFI", "::/EFI/debian")
    run("mcopy", "-i", src.parts[0], str(shim), str(grub), "::/EFI/debian/")
    image = tmp_path / "image"
    from rescue.cli import main  # noqa: PLC0415

    assert main(["capture", src.path, str(image)]) == 0
    target = loop_disk_factory(160, None, [])
    notes = RecordingProgress()
    restore(plan_restore(image, target.path), confirmed=True, progress=notes)
    target.rescan()
    out = tmp_path / "copied.efi"
    run("mcopy", "-i", target.parts[0], "::/EFI/BOOT/BOOTX64.EFI", str(out))
    assert out.read_bytes() == shim.read_bytes()
    run("mcopy", "-o", "-i", target.parts[0], "::/EFI/BOOT/grubx64.efi", str(out))
    assert out.read_bytes() == grub.read_bytes()
    uefi = [n for n in notes.notes if n.startswith("UEFI boot")]
    assert any("copied /EFI/debian/shimx64.efi to the fallback path" in n for n in uefi), uefi
    if not firmware_writable():
        assert any("cannot be written here" in n for n in uefi), uefi
    run("fsck.vfat", "-n", target.parts[0])
