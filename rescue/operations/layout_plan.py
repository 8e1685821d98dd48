"""Where each partition goes on the target: the arithmetic of grow and fit, no I/O.

A restore onto a disk of another size first plans its layout from the image's
partitions (:class:`Slot`): onto a larger disk one partition takes the new room
(:func:`plan_growth`); onto a smaller one every shrinkable partition gets its
minimum plus a share of the spare room (:func:`plan_fit`). Either plan rewrites
the saved sfdisk script. Nothing here reads or writes a disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rescue.errors import BadInputError, RefusedError
from rescue.filesystems import registry
from rescue.units import human_size

MiB = 1 << 20
GPT_BACKUP = 33 * 512
"""The backup GPT after the last partition (33 sectors of 512 bytes)."""


@dataclass(frozen=True)
class Slot:
    """A partition of the image as the planners see it."""

    name: str
    number: int | None
    start: int
    size: int
    fstype: str | None


def fixed_size_reason(slot: Slot) -> str | None:
    """Why ``slot`` must keep its size on a larger disk (None: it may grow)."""
    fs = registry.get(slot.fstype)
    return fs.keeps_size if fs is not None else None


def align_up(n: int, unit: int = MiB) -> int:
    return -(-n // unit) * unit


def align_down(n: int, unit: int = MiB) -> int:
    return n - n % unit


# --- onto a larger disk ---------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    name: str
    number: int
    start: int
    old_size: int
    new_size: int
    fstype: str | None
    moved: tuple[tuple[str, int, int], ...] = ()
    """(name, new start, size) of the partitions after a growing one that is not the last."""

    def starts(self) -> dict[str, int]:
        """New starts of the partitions that move."""
        return {name: start for name, start, _ in self.moved}

    def script(self, sf_text: str, sector: int) -> str:
        """The saved sfdisk script with this growth applied."""
        return grown_script(sf_text, self, sector)


def plan_growth(
    parts: Sequence[Slot],
    table: str | None,
    target_size: int,
    number: int | None = None,
) -> Growth | None:
    """How a partition grows on a target of ``target_size`` bytes (None: it does not).

    The partition ``number`` (default: the last) takes the new room; the
    partitions after it move to the end of the disk, keeping their sizes.
    """
    numbered = sorted((p for p in parts if p.number is not None), key=lambda p: p.start)
    if not numbered or table not in ("gpt", "dos"):
        if number is not None:
            raise BadInputError("The image has no partition table: no partition can grow.")
        return None
    index = len(numbered) - 1
    if number is not None:
        found = [i for i, p in enumerate(numbered) if p.number == number]
        if not found:
            have = ", ".join(str(p.number) for p in numbered)
            raise BadInputError(f"The image has no partition {number} (it has {have}).")
        index = found[0]
    slot = numbered[index]
    num, start, size = slot.number, slot.start, slot.size
    assert num is not None
    fixed = fixed_size_reason(slot)
    if fixed is not None:
        if number is not None:
            raise RefusedError(f"Partition {num} cannot grow: {fixed}.")
        return None
    after = numbered[index + 1 :]
    if table == "dos" and any((p.number or 0) > 4 for p in after):
        raise RefusedError(
            f"Partition {num} cannot grow: logical partitions after it would have to move.",
            hint="Grow the last partition instead (the default).",
        )
    end = target_size - (GPT_BACKUP if table == "gpt" else 0)
    end -= end % MiB
    extra = end - start - size
    if after:
        extra = end - max(p.start + p.size for p in numbered)
        extra -= extra % MiB  # the partitions that move keep their alignment
    if extra <= MiB:  # not worth it (or no room)
        return None
    moved = tuple((p.name, p.start + extra, p.size) for p in after)
    return Growth(slot.name, num, start, size, size + extra, slot.fstype, moved)


def resized_script(sf_text: str, sector: int, places: dict[str, tuple[int, int]]) -> str:
    """The saved sfdisk script with a new (start, size), in bytes, for the named partitions."""
    out = []
    for line in sf_text.splitlines():
        head, _, rest = line.partition(":")
        place = places.get(head.strip().rsplit("/", 1)[-1])
        if place is None or "size=" not in rest:
            out.append(line)
            continue
        fields = []
        for field in (f.strip() for f in rest.split(",")):
            if field.startswith("start="):
                fields.append(f"start={place[0] // sector}")
            elif field.startswith("size="):
                fields.append(f"size={place[1] // sector}")
            else:
                fields.append(field)
        out.append(f"{head}: {', '.join(fields)}")
    return "\n".join(out) + "\n"


def grown_script(sf_text: str, growth: Growth, sector: int) -> str:
    """The saved sfdisk script with the growing partition's size changed."""
    places = {growth.name: (growth.start, growth.new_size)}
    places.update({name: (start, size) for name, start, size in growth.moved})
    if growth.number > 4:  # a logical partition: the extended partition holding it grows too
        for name, start, size, kind in _script_entries(sf_text, sector):
            inside = start <= growth.start and start + size >= growth.start + growth.old_size
            if kind.lower().removeprefix("0x") in _EXTENDED and inside:
                places[name] = (start, growth.start + growth.new_size - start)
    return resized_script(sf_text, sector, places)


_EXTENDED = ("5", "f", "85")
"""MBR types of an extended partition."""


def _script_entries(sf_text: str, sector: int) -> list[tuple[str, int, int, str]]:
    """(name, start, size, type) of every partition line of an sfdisk script, in bytes."""
    out = []
    for line in sf_text.splitlines():
        head, _, rest = line.partition(":")
        fields = dict(f.strip().partition("=")[::2] for f in rest.split(",") if "=" in f)
        if "start" in fields and "size" in fields:
            name = head.strip().rsplit("/", 1)[-1]
            start, size = int(fields["start"]) * sector, int(fields["size"]) * sector
            out.append((name, start, size, fields.get("type", "").strip()))
    return out


# --- onto a smaller disk --------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    name: str
    number: int
    start: int
    size: int
    old_start: int
    old_size: int
    fstype: str | None
    minimum: int

    @property
    def shrinks(self) -> bool:
        return self.size < self.old_size

    @property
    def moves(self) -> bool:
        return self.start != self.old_start


@dataclass(frozen=True)
class Fit:
    """Where every partition goes on a smaller target, and how large it becomes."""

    placements: tuple[Placement, ...]

    def get(self, name: str) -> Placement | None:
        return next((p for p in self.placements if p.name == name), None)

    def script(self, sf_text: str, sector: int) -> str:
        """The saved sfdisk script with the new starts and sizes."""
        return resized_script(sf_text, sector, {p.name: (p.start, p.size) for p in self.placements})

    def describe(self) -> str:
        bits = []
        for p in self.placements:
            if p.shrinks:
                bits.append(
                    f"partition {p.number} ({p.fstype}) shrinks from {human_size(p.old_size)} "
                    f"to {human_size(p.size)}"
                )
            elif p.moves:
                bits.append(f"partition {p.number} ({p.fstype or 'raw'}) moves")
        return "; ".join(bits)


class TooSmallError(RefusedError):
    """Even with every filesystem at its minimum, the partitions do not fit."""


def _pack(parts: Sequence[Slot], sizes: list[int]) -> list[tuple[int, int]]:
    """(start, size) of the partitions in their order: first where it was, then 1 MiB aligned."""
    placed: list[tuple[int, int]] = []
    for i, size in enumerate(sizes):
        start = parts[0].start if i == 0 else align_up(placed[-1][0] + placed[-1][1])
        placed.append((start, size))
    return placed


def plan_fit(
    parts: Sequence[Slot],
    minimums: dict[str, int],
    table: str | None,
    target_size: int,
) -> Fit:
    """Sizes and places for ``parts`` on the target (``minimums`` by name; others keep their size).

    Each shrinkable partition gets its minimum plus a share of the spare room in
    proportion to how much it could shrink; no partition grows. Partitions keep
    their order; the first keeps its start, the others follow 1 MiB aligned.
    """
    parts = sorted(parts, key=lambda p: p.start)
    end = align_down(target_size - (GPT_BACKUP if table == "gpt" else 0))
    floor = [minimums.get(p.name, p.size) for p in parts]
    packed = _pack(parts, floor)
    least_end = packed[-1][0] + packed[-1][1]
    if least_end > end:
        need = align_up(least_end + (GPT_BACKUP if table == "gpt" else 0))
        raise TooSmallError(
            f"The target is too small even for the used data: it has {target_size} bytes "
            f"({human_size(target_size)}); with every filesystem shrunk as far as it goes the "
            f"partitions need a disk of at least {need} bytes ({human_size(need)}).",
            hint="Choose a larger target disk.",
        )
    spare = end - least_end
    room = [p.size - f for p, f in zip(parts, floor, strict=True)]
    total_room = sum(room)
    sizes = []
    for p, f, r in zip(parts, floor, room, strict=True):
        extra = align_down(spare * r // total_room) if total_room else 0
        sizes.append(min(p.size, f + extra) if r else p.size)
    placed = _pack(parts, sizes)
    return Fit(
        tuple(
            Placement(p.name, p.number or 0, start, size, p.start, p.size, p.fstype, floor[i])
            for i, (p, (start, size)) in enumerate(zip(parts, placed, strict=True))
        )
    )
