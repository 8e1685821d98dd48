"""Reading files of an image folder that may be damaged or made by someone else.

Every file rescue reads from an image folder is opened here, by a plain name
(no ``/``, no ``..``, no control characters): never through a symbolic link,
never a FIFO, a device or a folder, and never waiting on one. Small files are
read with a size limit, so no file of the folder can make rescue allocate more
than that. docs/FORMAT.md ("What a reader enforces") lists the limits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rescue.errors import ImageDamagedError
from rescue.text import printable

MiB = 1 << 20
MAX_MANIFEST = 16 * MiB
"""rescue.json: a manifest of thousands of partitions and damaged ranges stays far below."""
MAX_LAYOUT_FILE = 4 * MiB
"""Clonezilla's text files, table dumps and boot areas (the largest, hidden data, is 1 MiB)."""
MAX_NAME = 255

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def plain_name(name: object, what: str) -> str:
    """``name`` if it names a file directly inside the folder; an error in words otherwise."""
    if not isinstance(name, str) or not name:
        raise ImageDamagedError(f"The image names {what} with {printable(repr(name))}: not a name.")
    if name in (".", "..") or len(name) > MAX_NAME or _UNSAFE.search(name):
        raise ImageDamagedError(
            f"The image names {what} {printable(repr(name))}: not a plain file name "
            "(rescue reads only files directly inside the image folder)."
        )
    return name


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_member(folder: Path, name: str, what: str = "a file") -> int:
    """A read-only descriptor of the regular file ``name`` directly inside ``folder``.

    Opened without following a symbolic link and without blocking (a FIFO is
    refused, never waited on); the caller closes it.
    """
    plain_name(name, what)
    path = folder / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ImageDamagedError(f"{printable(name)} is missing from {folder}.") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageDamagedError(
                f"{printable(name)} in {folder} is a symbolic link; rescue reads only files "
                "that are inside the image folder."
            ) from exc
        raise ImageDamagedError(
            f"{printable(name)} in {folder} cannot be opened: {exc.strerror or exc}."
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageDamagedError(
                f"{printable(name)} in {folder} is {_kind(mode)}, not a file of an image."
            )
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def member_size(folder: Path, name: str, what: str = "a file") -> int:
    """The size of the regular file ``name`` in ``folder`` (checked as :func:`open_member`);
    in an encrypted image, of its sealed copy."""
    handler = sealed_folder(folder)
    if handler is not None and handler.is_sealed(name):
        name = handler.stored_name(name)
    fd = open_member(folder, name, what)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class SealedFolder(Protocol):
    """How the files of an encrypted image's folder are read (:mod:`rescue.image.sealing`
    registers one per unlocked folder): every reader of image files asks here, so a
    sealed image reads as a plain one once its key is known."""

    def is_sealed(self, name: str) -> bool:
        """``name`` (a plain name, as a reader asks for it) is stored sealed."""
        ...

    def stored_name(self, name: str) -> str: ...

    def stream_name(self, stored: str) -> str | None:
        """The plain stream name a stored volume name belongs to (None: not sealed)."""
        ...

    def read(self, folder: Path, name: str, limit: int, what: str) -> bytes: ...

    def opener(
        self,
        name: str,
        sealed_bytes: int,
        pread: Callable[[int, int], bytes],
        where: Callable[[int], tuple[str, int]],
        *,
        unfinished: bool = False,
    ) -> Any: ...


_SEALED: dict[tuple[int, int], SealedFolder] = {}


def _folder_key(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def register_sealed(folder: Path, handler: SealedFolder) -> None:
    """From now on this process reads ``folder`` through ``handler`` (its files unsealed)."""
    key = _folder_key(folder)
    if key is None:
        raise ImageDamagedError(f"{folder} cannot be opened.")
    _SEALED[key] = handler


def forget_sealed(folder: Path) -> None:
    key = _folder_key(folder)
    if key is not None:
        _SEALED.pop(key, None)


def sealed_folder(folder: Path) -> SealedFolder | None:
    """The handler of an unlocked encrypted image's folder (None: a plain folder)."""
    if not _SEALED:
        return None
    key = _folder_key(folder)
    return None if key is None else _SEALED.get(key)


def read_member(folder: Path, name: str, limit: int, what: str = "a file") -> bytes:
    """All of the file ``name`` in ``folder``; refused when it is larger than ``limit``.

    In an unlocked encrypted image, the file's sealed copy is read and opened."""
    handler = sealed_folder(folder)
    if handler is not None and handler.is_sealed(name):
        return handler.read(folder, name, limit, what)
    return read_stored(folder, name, limit, what)


def read_stored(folder: Path, name: str, limit: int, what: str = "a file") -> bytes:
    """All of the file ``name`` as it is stored (sealed or not); at most ``limit`` bytes."""
    fd = open_member(folder, name, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ImageDamagedError(
                f"{printable(name)} in {folder} has {size} bytes; such a file of an image "
                f"has at most {limit}: it is not one rescue can trust."
            )
        chunks = []
        left = limit + 1
        while left > 0:
            try:
                chunk = os.read(fd, min(left, MiB))
            except OSError as exc:
                raise ImageDamagedError(
                    f"{printable(name)} in {folder} cannot be read: {exc.strerror or exc}."
                ) from exc
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ImageDamagedError(f"{printable(name)} in {folder} grew past {limit} bytes.")
    return data


def has_member(folder: Path, name: str) -> bool:
    """``name`` exists in ``folder`` as an entry of its own (a link is not followed)."""
    handler = sealed_folder(folder)
    if handler is not None and handler.is_sealed(name):
        name = handler.stored_name(name)
    try:
        os.lstat(folder / plain_name(name, "a file"))
    except FileNotFoundError:
        return False
    return True


def read_text_member(folder: Path, name: str, limit: int = MAX_LAYOUT_FILE) -> str:
    return read_member(folder, name, limit).decode(errors="replace")
