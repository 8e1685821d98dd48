"""LVM2's text metadata: the parser, and the volume group it describes.

A metadata area holds the volume group as text (LVM2's "Text Format Volume
Group", version 1)::

    vg0 {
        id = "..."
        seqno = 7
        extent_size = 8192              # sectors of 512 bytes
        physical_volumes { pv0 { id = "..." pe_start = 2048 pe_count = 39 } }
        logical_volumes {
            root {
                status = ["READ", "WRITE", "VISIBLE"]
                segment_count = 1
                segment1 {
                    start_extent = 0
                    extent_count = 10
                    type = "striped"
                    stripe_count = 1
                    stripes = ["pv0", 0]
                }
            }
        }
    }
    contents = "Text Format Volume Group"
    version = 1

The text comes from the disk and may be damaged or made to harm: the parser
takes only what this grammar allows (sections, ``key = value`` with a string,
an integer or a flat list of them, ``#`` comments), bounds the text's size,
the nesting, every number and every count, and raises
:class:`~rescue.errors.FilesystemError` with what is wrong. It never loops
more than once over the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rescue.errors import FilesystemError

MAX_TEXT = 32 << 20
"""Metadata text rescue reads at most (LVM's own metadata areas are 1 MiB by default)."""
MAX_DEPTH = 8
"""Sections nested deeper than this are refused (LVM writes at most four levels)."""
MAX_NAME = 128
"""Longest name of a section or key (LVM's names of VGs and LVs are at most 127 characters)."""
MAX_NUMBER = (1 << 63) - 1
"""Largest integer taken (LVM stores sizes and extents as 64-bit numbers)."""
MAX_EXTENT_SECTORS = 1 << 32
"""Largest extent size taken, in sectors (2 TiB, far past what vgcreate allows)."""

SECTOR = 512
"""LVM counts ``extent_size``, ``pe_start`` and ``stripe_size`` in 512-byte sectors."""

Scalar = int | str
Value = Scalar | tuple[Scalar, ...]

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"[^"\\]*(?:\\.[^"\\]*)*")
  | (?P<word>[A-Za-z0-9_+.\-]+)
  | (?P<punct>[{}\[\]=,])
    """,
    re.VERBOSE | re.DOTALL,
)
_INTEGER = re.compile(r"-?[0-9]+")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


@dataclass
class Section:
    """One ``name { ... }`` block: its values and its subsections, in the order written."""

    name: str
    values: dict[str, Value]
    sections: dict[str, Section]

    def integer(self, key: str, *, low: int = 0, high: int = MAX_NUMBER) -> int:
        """The integer ``key``, which must be there and lie in ``[low, high]``."""
        value = self.values.get(key)
        if not isinstance(value, int):
            raise FilesystemError(f"LVM metadata: {self.name} has no number {key}.")
        if not low <= value <= high:
            raise FilesystemError(f"LVM metadata: {self.name}'s {key} = {value} is impossible.")
        return value

    def string(self, key: str) -> str:
        """The string ``key``, which must be there."""
        value = self.values.get(key)
        if not isinstance(value, str):
            raise FilesystemError(f"LVM metadata: {self.name} has no text {key}.")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """The list of strings ``key`` (``status``, ``flags``); empty when it is absent."""
        value = self.values.get(key, ())
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise FilesystemError(f"LVM metadata: {self.name}'s {key} is not a list of words.")
        return tuple(str(v) for v in value)

    def section(self, key: str) -> Section:
        found = self.sections.get(key)
        if found is None:
            raise FilesystemError(f"LVM metadata: {self.name} has no section {key}.")
        return found


def _short(lexeme: str) -> str:
    """A token as an error message shows it (hostile text may hold a word of megabytes)."""
    return lexeme if len(lexeme) <= 40 else f"{lexeme[:40]}..."


class _Tokens:
    """The text as tokens (kind, text), with the line each is on for messages."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def next(self) -> tuple[str, str]:
        while self.pos < len(self.text):
            m = _TOKEN.match(self.text, self.pos)
            if m is None:
                if self.text[self.pos] == '"':
                    raise self.error("a string that does not end")
                raise self.error(f"unexpected character {self.text[self.pos]!r}")
            self.pos = m.end()
            kind = m.lastgroup or ""
            lexeme = m.group()
            if kind in ("space", "comment", "string"):
                self.line += lexeme.count("\n")
            if kind not in ("space", "comment"):
                return kind, lexeme
        return "end", ""

    def error(self, what: str) -> FilesystemError:
        return FilesystemError(f"LVM metadata is damaged: {what} on line {self.line}.")


def _scalar(tokens: _Tokens, kind: str, lexeme: str) -> Scalar:
    if kind == "string":
        return _ESCAPE.sub(r"\1", lexeme[1:-1])
    if kind == "word" and _INTEGER.fullmatch(lexeme):
        if len(lexeme) > 20 or abs(value := int(lexeme)) > MAX_NUMBER:
            raise tokens.error(f"number {_short(lexeme)} is too large")
        return value
    raise tokens.error(f"{_short(lexeme) or 'the end'} where a value belongs")


def _value(tokens: _Tokens) -> Value:
    kind, lexeme = tokens.next()
    if lexeme != "[":
        return _scalar(tokens, kind, lexeme)
    items: list[Scalar] = []
    kind, lexeme = tokens.next()
    while lexeme != "]":
        items.append(_scalar(tokens, kind, lexeme))
        kind, lexeme = tokens.next()
        if lexeme == ",":
            kind, lexeme = tokens.next()
        elif lexeme != "]":
            raise tokens.error(
                f"{_short(lexeme) or 'the end'} in a list (a comma or ] belongs there)"
            )
    return tuple(items)


def parse(text: str) -> Section:
    """The sections and values of LVM2 metadata ``text`` (the top level is named ``metadata``)."""
    if len(text) > MAX_TEXT:
        raise FilesystemError(f"LVM metadata of {len(text)} bytes is larger than rescue reads.")
    tokens = _Tokens(text)
    top = Section("metadata", {}, {})
    stack = [top]
    while True:
        kind, lexeme = tokens.next()
        if kind == "end":
            if len(stack) > 1:
                raise tokens.error(f"section {stack[-1].name} is not closed")
            return top
        current = stack[-1]
        if lexeme == "}":
            if len(stack) == 1:
                raise tokens.error("} without a section")
            stack.pop()
            continue
        if kind != "word":
            raise tokens.error(f"{_short(lexeme)} where a name belongs")
        name = lexeme
        if len(name) > MAX_NAME:
            raise tokens.error(f"name {_short(name)} is longer than LVM allows")
        _, after = tokens.next()
        if name in current.values or name in current.sections:
            raise tokens.error(f"{_short(name)} given twice in {current.name}")
        if after == "=":
            current.values[name] = _value(tokens)
        elif after == "{":
            if len(stack) >= MAX_DEPTH:
                raise tokens.error(f"sections nested deeper than {MAX_DEPTH}")
            section = Section(name, {}, {})
            current.sections[name] = section
            stack.append(section)
        else:
            raise tokens.error(
                f"{_short(after) or 'the end'} after {_short(name)} (= or {{ belongs there)"
            )


@dataclass(frozen=True)
class Segment:
    """A run of an LV's extents and how they are laid out (``segmentN { ... }``)."""

    start_extent: int
    extent_count: int
    type: str
    stripe_count: int
    stripe_size: int
    """Sectors of one stripe chunk; 0 when there is one stripe."""
    areas: tuple[tuple[str, int], ...]
    """``(physical volume key or LV name, first extent)`` of each stripe or mirror leg."""
    uses: tuple[str, ...]
    """Names of other LVs the segment is built on (a pool's data, a RAID's images, the
    temporary mirror of a pvmove, ...), each once."""
    values: dict[str, Value]
    """Everything the segment says, for the few types read by name (snapshots, thin)."""


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    status: tuple[str, ...]
    segments: tuple[Segment, ...]

    @property
    def visible(self) -> bool:
        return "VISIBLE" in self.status

    @property
    def extent_count(self) -> int:
        return sum(s.extent_count for s in self.segments)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.type for s in self.segments))


@dataclass(frozen=True)
class PhysicalVolume:
    key: str
    """The name the segments use for it (``pv0``)."""
    uuid: str
    pe_start: int
    """Sectors before the first extent."""
    pe_count: int


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    seqno: int
    extent_size: int
    """Sectors of one extent."""
    pvs: tuple[PhysicalVolume, ...]
    lvs: tuple[LogicalVolume, ...]

    def pv(self, uuid: str) -> PhysicalVolume | None:
        return next((pv for pv in self.pvs if pv.uuid == uuid), None)

    def lv(self, name: str) -> LogicalVolume | None:
        return next((lv for lv in self.lvs if lv.name == name), None)


# Keys a segment of these types names another LV with that the segment does not own:
# a thin volume lives in its pool (the pool is stored with all its volumes), a thin
# snapshot's origin is another thin volume of that pool, and an old-style snapshot's
# origin is an ordinary LV that is read as usual.
_NOT_OWNED = {"thin": {"thin_pool", "origin", "merge"}, "snapshot": {"origin"}}


def _segment(section: Section, lv_names: set[str]) -> Segment:
    kind = section.string("type")
    start = section.integer("start_extent")
    count = section.integer("extent_count", low=1)
    areas: list[tuple[str, int]] = []
    uses: list[str] = []
    not_owned = _NOT_OWNED.get(kind, set())
    for key, value in section.values.items():
        if key in not_owned or key in ("type", "tags"):
            continue
        items = value if isinstance(value, tuple) else (value,)
        paired = (
            len(items) >= 2
            and len(items) % 2 == 0
            and all(isinstance(n, str) for n in items[0::2])
            and all(isinstance(n, int) for n in items[1::2])
        )
        if paired and (key == "stripes" or kind != "striped"):
            for name, first in zip(items[0::2], items[1::2], strict=True):
                assert isinstance(name, str) and isinstance(first, int)
                if first < 0:
                    raise FilesystemError(f"LVM metadata: {section.name} starts at extent {first}.")
                if name in lv_names:
                    uses.append(name)
                else:
                    areas.append((name, first))
        elif kind != "striped":
            uses += [n for n in items if isinstance(n, str) and n in lv_names]
    stripes = 1
    stripe_size = 0
    if kind == "striped":
        stripes = section.integer("stripe_count", low=1, high=1 << 16)
        listed = len(areas) + len(uses)  # stripes on other LVs: a pvmove under way
        if stripes != listed:
            raise FilesystemError(
                f"LVM metadata: {section.name} says {stripes} stripes but lists {listed}."
            )
        if stripes > 1:
            stripe_size = section.integer("stripe_size", low=1, high=MAX_EXTENT_SECTORS)
    return Segment(
        start_extent=start,
        extent_count=count,
        type=kind,
        stripe_count=stripes,
        stripe_size=stripe_size,
        areas=tuple(areas),
        uses=tuple(dict.fromkeys(uses)),
        values=dict(section.values),
    )


def _logical_volume(section: Section, lv_names: set[str]) -> LogicalVolume:
    count = section.integer("segment_count", low=1, high=len(section.sections) or 1)
    segments: list[Segment] = []
    at = 0
    for n in range(1, count + 1):
        segment = _segment(section.section(f"segment{n}"), lv_names)
        if segment.start_extent != at:
            raise FilesystemError(
                f"LVM metadata: segment{n} of {section.name} starts at extent "
                f"{segment.start_extent}, not {at} where the one before ends."
            )
        at += segment.extent_count
        if at > MAX_NUMBER:
            raise FilesystemError(f"LVM metadata: {section.name} has impossibly many extents.")
        segments.append(segment)
    return LogicalVolume(section.name, section.strings("status"), tuple(segments))


def volume_group(top: Section) -> VolumeGroup:
    """The volume group that parsed metadata ``top`` describes."""
    if top.values.get("contents") != "Text Format Volume Group" or top.values.get("version") != 1:
        raise FilesystemError("The LVM metadata is not a version 1 text volume group.")
    if len(top.sections) != 1:
        raise FilesystemError(f"LVM metadata holds {len(top.sections)} volume groups, not one.")
    (vg,) = top.sections.values()
    extent_size = vg.integer("extent_size", low=1, high=MAX_EXTENT_SECTORS)
    pvs = tuple(
        PhysicalVolume(
            key=pv.name,
            uuid=pv.string("id"),
            pe_start=pv.integer("pe_start"),
            pe_count=pv.integer("pe_count"),
        )
        for pv in vg.section("physical_volumes").sections.values()
    )
    lv_sections = vg.sections.get("logical_volumes", Section("logical_volumes", {}, {}))
    names = set(lv_sections.sections)
    lvs = tuple(_logical_volume(lv, names) for lv in lv_sections.sections.values())
    return VolumeGroup(vg.name, vg.integer("seqno"), extent_size, pvs, lvs)
