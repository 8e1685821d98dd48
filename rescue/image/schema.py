"""Typed, range-checked reading of JSON read from an image folder.

A value of the wrong type or out of range is an :class:`ImageDamagedError` that
names the file and the field (``rescue.json: partitions[1].size``), never a
``TypeError`` deep inside the code that would have used it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from rescue.errors import ImageDamagedError
from rescue.image.folder import plain_name
from rescue.text import printable

T = TypeVar("T")

MAX_BYTES = 1 << 60
"""No disk, partition or stream rescue reads is larger (an exabyte)."""
MAX_TEXT = 4096
"""Longest free text kept from a manifest (a model, a label, a warning)."""


class Fields:
    """The fields of one JSON object, read with their types checked."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, Mapping):
            raise damaged(where, f"is {_kind(doc)}, not an object")
        self.doc: Mapping[str, Any] = doc
        self.where = where

    def at(self, key: str) -> str:
        return f"{self.where}.{key}"

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.doc:
            if optional:
                return None
            raise damaged(self.at(key), "is missing")
        return self.doc[key]

    def integer(
        self,
        key: str,
        *,
        low: int = 0,
        high: int = MAX_BYTES,
        optional: bool = False,
        default: int | None = None,
    ) -> int | None:
        value = self._get(key, optional)
        if value is None:
            if optional:
                return default
            raise damaged(self.at(key), "is null, not a number")
        if isinstance(value, bool) or not isinstance(value, int):
            raise damaged(self.at(key), f"is {_kind(value)}, not a whole number")
        if not low <= value <= high:
            raise damaged(self.at(key), f"is {value}, outside {low}..{high}")
        return value

    def count(self, key: str, *, high: int = MAX_BYTES, default: int = 0) -> int:
        """A non-negative whole number that may be absent (then ``default``)."""
        value = self.integer(key, high=high, optional=True, default=default)
        assert value is not None
        return value

    def required_int(self, key: str, *, low: int = 0, high: int = MAX_BYTES) -> int:
        value = self.integer(key, low=low, high=high)
        assert value is not None
        return value

    def text(self, key: str, *, optional: bool = False, max_len: int = MAX_TEXT) -> str | None:
        value = self._get(key, optional)
        if value is None:
            if optional:
                return None
            raise damaged(self.at(key), "is null, not a text")
        if not isinstance(value, str):
            raise damaged(self.at(key), f"is {_kind(value)}, not a text")
        if len(value) > max_len:
            raise damaged(self.at(key), f"is {len(value)} characters long (at most {max_len})")
        return value

    def required_text(self, key: str, *, max_len: int = MAX_TEXT) -> str:
        value = self.text(key, max_len=max_len)
        assert value is not None
        return value

    def choice(self, key: str, allowed: tuple[object, ...], *, optional: bool = False) -> Any:
        if optional and key not in self.doc:
            return None
        value = self._get(key, optional)
        if value not in allowed or isinstance(value, bool):
            words = ", ".join("null" if a is None else repr(a) for a in allowed)
            raise damaged(self.at(key), f"is {_show(value)}; this rescue knows only {words}")
        return value

    def name(self, key: str, what: str, *, optional: bool = False) -> str | None:
        """A plain file name (it becomes part of a path inside the image folder)."""
        value = self._get(key, optional)
        if value is None and optional:
            return None
        try:
            return plain_name(value, what)
        except ImageDamagedError as exc:
            raise damaged(self.at(key), exc.message) from exc

    def items(self, key: str, *, max_items: int, optional: bool = True) -> list[Any]:
        value = self._get(key, optional)
        if value is None:
            return []
        if not isinstance(value, list):
            raise damaged(self.at(key), f"is {_kind(value)}, not a list")
        if len(value) > max_items:
            raise damaged(self.at(key), f"has {len(value)} entries (at most {max_items})")
        return value

    def objects(self, key: str, *, max_items: int, optional: bool = True) -> list[Fields]:
        return [
            Fields(v, f"{self.at(key)}[{i}]")
            for i, v in enumerate(self.items(key, max_items=max_items, optional=optional))
        ]

    def texts(self, key: str, *, max_items: int) -> tuple[str, ...]:
        out = []
        for i, v in enumerate(self.items(key, max_items=max_items)):
            if not isinstance(v, str) or len(v) > MAX_TEXT:
                raise damaged(f"{self.at(key)}[{i}]", f"is {_kind(v)}, not a short text")
            out.append(v)
        return tuple(out)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, True)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise damaged(self.at(key), f"is {_kind(value)}, not an object")
        return dict(value)

    def each(self, key: str, read: Callable[[Fields], T], *, max_items: int) -> tuple[T, ...]:
        return tuple(read(f) for f in self.objects(key, max_items=max_items))


def damaged(where: str, problem: str) -> ImageDamagedError:
    return ImageDamagedError(f"{where} {problem}.")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {_show(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    text = repr(value)
    return printable(text if len(text) <= 60 else text[:57] + "...")
