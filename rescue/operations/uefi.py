"""After restoring a disk with an EFI system partition: make sure it can boot.

1. The fallback loader path (``EFI/BOOT/BOOTX64.EFI``), which firmware tries
   when it has no boot entry for the disk, is made to exist: when missing, the
   restored system's own loader (shim first, then GRUB, then systemd-boot) is
   copied there.
2. Where this machine's firmware variables can be written (booted in UEFI mode,
   efivarfs mounted, efibootmgr installed), a boot entry for that loader on the
   restored disk is created; the entries are then read back and reported as
   they really are. Where they cannot, the report says so: the fallback path is
   what will boot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rescue.progress import ProgressReporter
from rescue.system import output, run, which

ESP_TYPES = {"c12a7328-f81f-11d2-ba4b-00a0c93ec93b"}
FALLBACK = "/EFI/BOOT/BOOTX64.EFI"
_LOADERS = ("shimx64.efi", "grubx64.efi", "systemd-bootx64.efi")
EFIVARS = Path("/sys/firmware/efi/efivars")


@dataclass
class UefiReport:
    esp: str
    loader: str | None = None
    """The restored system's own loader (ESP path), if one was found."""
    fallback_created: bool = False
    entry: str | None = None
    """The firmware boot entry made for the loader, as efibootmgr reads it back."""
    notes: list[str] = field(default_factory=list)


def _files(esp: str) -> list[str]:
    listing = run(["mdir", "-i", esp, "-/", "-b", "::/EFI"], check=False)
    return [n.removeprefix("::") for n in listing.stdout.decode(errors="replace").split()]


def firmware_writable() -> bool:
    return EFIVARS.is_dir() and any(EFIVARS.iterdir()) and which("efibootmgr") is not None


def repair_uefi_boot(
    disk: str, esp: str, number: int, *, label: str, progress: ProgressReporter
) -> UefiReport:
    """Fallback loader on the ESP ``esp`` (partition ``number`` of ``disk``), then an entry."""
    report = UefiReport(esp)
    files = _files(esp)
    lower = {f.lower(): f for f in files}
    loader = next(
        (f for name in _LOADERS for f in files
         if f.lower().endswith("/" + name) and not f.lower().startswith("/efi/boot/")),
        None,
    )  # fmt: skip
    report.loader = loader
    if FALLBACK.lower() in lower:
        report.notes.append(f"the fallback loader {FALLBACK} is present")
    elif loader is not None:
        folder = loader.rsplit("/", 1)[0]
        run(["mmd", "-i", esp, "::/EFI/BOOT"], check=False)
        run(["mcopy", "-o", "-i", esp, f"::{loader}", f"::{FALLBACK}"])
        if loader.lower().endswith("shimx64.efi"):  # shim loads grubx64.efi from its own folder
            grub = lower.get(f"{folder}/grubx64.efi".lower())
            if grub:
                run(["mcopy", "-o", "-i", esp, f"::{grub}", "::/EFI/BOOT/grubx64.efi"])
        report.fallback_created = True
        report.notes.append(f"copied {loader} to the fallback path {FALLBACK}")
    else:
        report.notes.append("no UEFI loader found on the EFI system partition")
    target = loader or (lower.get(FALLBACK.lower()) and FALLBACK)
    if target and firmware_writable():
        path = target.replace("/", "\\")
        run(["efibootmgr", "-q", "-c", "-d", disk, "-p", str(number), "-L", label, "-l", path])
        listing = output(["efibootmgr", "-v"])
        found = [ln for ln in listing.splitlines() if label in ln]
        report.entry = found[-1].strip() if found else None
        report.notes.append(
            f"firmware entry: {report.entry}" if report.entry
            else "efibootmgr ran, but reading the entries back shows none for this disk"
        )  # fmt: skip
    elif target:
        report.notes.append(
            "this machine's firmware variables cannot be written here (not booted in UEFI "
            "mode): no boot entry made; the firmware will boot the fallback path"
        )
    for n in report.notes:
        progress.note(f"UEFI boot ({esp}): {n}")
    return report
