"""Plain text tables that never cut what names a device, as lsblk's are.

Some columns are *whole*: a device path, a model, an image folder. Their text
is never cut nor folded; a cell given as a tuple of pieces (a model, then its
serial) may go on the next line between two pieces, never inside one. Every
other column wraps at spaces (a word longer than the column is folded) when
the table is wider than the terminal. When the whole columns alone leave too
little room, the lines are longer than the terminal: the terminal wraps them,
nothing is lost.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

Cell = str | tuple[str, ...]
"""A cell's text, or pieces joined by spaces that a whole column keeps unbroken."""

GAP = "  "
WRAP_FLOOR = 4
"""The narrowest a wrapping column gets (unless its header has a longer word)."""
WORD_KEPT = 12
"""A wrapping column keeps words this long whole (``boot-medium``) unless folding makes it fit."""


@dataclass(frozen=True)
class Column:
    header: str
    whole: bool = False
    """Never cut nor folded (a device path, a model): the other columns make room."""
    style: str = ""
    """How its cells look on a terminal (rich style); nothing when piped."""


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    styles: tuple[str, ...] = ()
    """Per cell, in place of its column's style ("": the column's)."""
    note: str | tuple[str, ...] = ""
    """Said under the row, across the columns (no column widens for it): a text wraps between
    words; a tuple is lines, each kept whole."""
    note_style: str = "red"


def terminal_width() -> int | None:
    """``COLUMNS``, else the terminal's width; None when piped (lsblk's rule: no limit)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):  # not a terminal, or no file at all
        return None


def _pieces(cell: Cell, whole: bool) -> list[str]:
    if isinstance(cell, tuple):
        return [p for p in cell if p]
    if whole:
        return [cell] if cell else []
    return cell.split()


def _text(cell: Cell) -> str:
    return " ".join(p for p in cell if p) if isinstance(cell, tuple) else cell


def _wrap(pieces: list[str], width: int, *, fold: bool) -> list[str]:
    """Greedy lines of ``pieces`` joined by spaces; ``fold`` cuts a piece wider than a line."""
    lines: list[str] = []
    line = ""
    for whole_piece in pieces:
        piece = whole_piece
        while fold and len(piece) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if not line:
            line = piece
        elif len(line) + 1 + len(piece) <= width:
            line += " " + piece
        else:
            lines.append(line)
            line = piece
    if line:
        lines.append(line)
    return lines or [""]


def _cell_lines(cell: Cell, column: Column, width: int) -> list[str]:
    return _wrap(_pieces(cell, column.whole), width, fold=not column.whole)


def _header_lines(column: Column, width: int) -> list[str]:
    return _wrap(column.header.split(), width, fold=True)


def _narrowed(
    columns: Sequence[Column], rows: Sequence[Row], widths: list[int], floors: list[int], room: int
) -> list[int]:
    """``widths``, the widest column above its floor narrowed again and again to fit ``room``."""
    widths = list(widths)
    while sum(widths) > room:
        narrower = [i for i in range(len(columns)) if widths[i] > floors[i]]
        if not narrower:
            break
        i = max(narrower, key=lambda n: widths[n])
        # as narrow as its text wrapped at one column less really is: a serial that goes below
        # the model frees the whole difference at once
        target, c = widths[i] - 1, columns[i]
        used = [
            *_header_lines(c, target),
            *(x for r in rows for x in _cell_lines(r.cells[i], c, target)),
        ]
        widths[i] = max([floors[i], *(len(x) for x in used)])
    return widths


def column_widths(columns: Sequence[Column], rows: Sequence[Row], width: int) -> list[int]:
    """Each column's width: its text's, the widest narrowed first while the table is too wide.

    No column gets narrower than its header's longest word, nor a whole column
    than its longest piece. A wrapping column first keeps its words (up to
    :data:`WORD_KEPT` characters) whole; it folds them only if that makes the
    table fit: when nothing does, the lines are longer than ``width`` and at
    least every word in them reads whole.
    """
    natural = [
        max([len(c.header), *(len(_text(r.cells[i])) for r in rows)]) for i, c in enumerate(columns)
    ]
    hard, soft = [], []
    for i, c in enumerate(columns):
        header_word = max((len(w) for w in c.header.split()), default=1)
        if c.whole:
            piece = max((len(p) for r in rows for p in _pieces(r.cells[i], True)), default=1)
            hard.append(max(header_word, piece))
            soft.append(hard[-1])
        else:
            word = max((len(w) for r in rows for w in _pieces(r.cells[i], False)), default=1)
            hard.append(max(header_word, min(natural[i], WRAP_FLOOR)))
            soft.append(max(hard[-1], min(word, WORD_KEPT)))
    room = width - len(GAP) * (len(columns) - 1)
    widths = _narrowed(columns, rows, natural, soft, room)
    if sum(widths) > room and sum(hard) <= room:
        widths = _narrowed(columns, rows, widths, hard, room)
    return widths


@dataclass(frozen=True)
class Line:
    """One printed line: its cells padded to their columns' widths, and the row it shows."""

    cells: tuple[str, ...]
    row: int
    """Index of its row in ``rows``; -1 for the header."""
    note: bool = False
    """A line of the row's note: one cell, under the row, across the columns."""


def layout(columns: Sequence[Column], rows: Sequence[Row], width: int) -> list[Line]:
    """The table's lines, the header's first, for ``width`` columns of terminal."""
    widths = column_widths(columns, rows, width)
    header = [_header_lines(c, w) for c, w in zip(columns, widths, strict=True)]
    out = _lines(header, widths, -1)
    for n, r in enumerate(rows):
        cells = [
            _cell_lines(cell, c, w) for cell, c, w in zip(r.cells, columns, widths, strict=True)
        ]
        out.extend(_lines(cells, widths, n))
        note_width = max(min(width, sum(widths) + len(GAP) * (len(widths) - 1)) - 2, 20)
        if isinstance(r.note, tuple):
            notes = [text for text in r.note if text]
        else:
            notes = _wrap(r.note.split(), note_width, fold=False) if r.note else []
        out.extend(Line(("  " + text,), n, note=True) for text in notes)
    return out


def _lines(wrapped: list[list[str]], widths: list[int], row: int) -> list[Line]:
    """Cells wrapped into lines side by side, each padded to its column's width."""
    pairs = list(zip(wrapped, widths, strict=True))
    return [
        Line(tuple((w[k] if k < len(w) else "").ljust(cw) for w, cw in pairs), row)
        for k in range(max(len(w) for w in wrapped))
    ]


def format_table(columns: Sequence[Column], rows: Sequence[Row], width: int) -> str:
    """The table as plain text."""
    return "\n".join(GAP.join(line.cells).rstrip() for line in layout(columns, rows, width))


def print_table(columns: Sequence[Column], rows: Sequence[Row]) -> None:
    """Print the table on stdout for :func:`terminal_width`: styled on a terminal, plain piped."""
    width = terminal_width()
    console = Console(soft_wrap=True, highlight=False)
    for line in layout(columns, rows, sys.maxsize if width is None else width):
        text = Text()
        for i, cell in enumerate(line.cells):
            if i:
                text.append(GAP)
            text.append(cell, style=_style(line, i, columns, rows))
        text.rstrip()
        console.print(text)


def _style(line: Line, i: int, columns: Sequence[Column], rows: Sequence[Row]) -> str:
    if line.row < 0:
        return "bold"
    row = rows[line.row]
    if line.note:
        return row.note_style
    return (row.styles[i] if i < len(row.styles) else "") or columns[i].style
