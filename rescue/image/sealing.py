"""Encrypted images: every file of the folder sealed with AES-256-GCM in chunks.

An encrypted image holds the same files as a plain one, each sealed as
``NAME.sealed`` (docs/FORMAT.md, "Encrypted images"). A sealed file is a header
and the file's bytes in chunks of :data:`CHUNK` bytes, each chunk encrypted and
authenticated on its own with a fresh random nonce, so that any byte range of
the plain file can be read (and a partition stream stays seekable) by opening
only the chunks that hold it. Each chunk's associated data binds it to its
file (the file's name and random id), its place (its index) and whether it is
the last: chunks cannot be moved, swapped between files or cut off unnoticed.

The key: a random 256-bit data key per image, stored in ``rescue-seal.json``
sealed by a key derived from the passphrase with Argon2id (a fresh random salt
per image). Each file's chunks are sealed with a key of their own, derived from
the data key and the file's id (HKDF-SHA256), so no key ever seals more than one
file's chunks. The passphrase and the keys live only in this process's memory
(and, for a mount, in its server's, handed over a pipe).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import secrets
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rescue.blockio import write_durable
from rescue.errors import ImageDamagedError, UnsupportedImageError, WrongKeyError
from rescue.image.folder import (
    has_member,
    read_member,
    read_stored,
    register_sealed,
    sealed_folder,
)
from rescue.image.volumes import VolumeReader, VolumeWriter, volume_paths
from rescue.text import printable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEME = "rescue-seal-1"
CIPHER = "AES-256-GCM"
KEY_FILE = "rescue-seal.json"
"""The folder's key header: how the key is derived and the data key, sealed."""
NOTE_FILE = "README-encrypted.txt"
"""A plain note for whoever opens the folder: what it is and how to open it."""
SUFFIX = ".sealed"
MAGIC = b"RSCSEAL1"
HEADER = struct.Struct("<8s16sII")
"""magic, file id, chunk size, reserved (0)."""
NONCE = 12
TAG = 16
CHUNK = 64 * 1024
"""Plain bytes per sealed chunk: a read opens at most this much more than it needs."""
OVERHEAD = NONCE + TAG
PIPE_KEY_BYTES = 64
"""An image id (32 hex digits) and its data key (32 bytes), as a server receives them."""

ARGON2_TIME = 3
ARGON2_MEMORY_KIB = 64 * 1024
ARGON2_LANES = 4
"""RFC 9106's second recommended setting: 64 MiB, three passes, four lanes (about a
quarter of a second here; a machine with little memory can still open the image)."""
MAX_ARGON2_MEMORY_KIB = 4 * 1024 * 1024
MAX_ARGON2_TIME = 64
_KEY_AAD = b"rescue-seal-1 data key"
_FILE_INFO = b"rescue-seal-1 file key"


def sealed_size(plain: int, chunk: int = CHUNK) -> int:
    """Bytes of the sealed file of ``plain`` bytes."""
    chunks = max(1, -(-plain // chunk))
    return HEADER.size + chunks * OVERHEAD + plain


def plain_size(sealed: int, chunk: int = CHUNK) -> int | None:
    """Bytes of the plain file a sealed one of ``sealed`` bytes holds (None: not a size
    a sealed file can have)."""
    body = sealed - HEADER.size
    if body < OVERHEAD:
        return None
    chunks = -(-body // (chunk + OVERHEAD))
    plain = body - chunks * OVERHEAD
    if plain < 0 or sealed_size(plain, chunk) != sealed:
        return None
    return plain


@dataclass(frozen=True)
class KeyHeader:
    """``rescue-seal.json``: everything needed to turn a passphrase into the data key."""

    salt: bytes
    time_cost: int
    memory_kib: int
    lanes: int
    wrapped: bytes
    """nonce + the data key sealed with the passphrase's key + tag."""
    image_id: str
    chunk: int = CHUNK

    def to_json(self) -> str:
        doc = {
            "scheme": SCHEME,
            "cipher": CIPHER,
            "chunk": self.chunk,
            "kdf": {
                "name": "argon2id",
                "salt": base64.b64encode(self.salt).decode(),
                "time_cost": self.time_cost,
                "memory_kib": self.memory_kib,
                "lanes": self.lanes,
            },
            "data_key": base64.b64encode(self.wrapped).decode(),
            "image_id": self.image_id,
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> KeyHeader:
        def bad(what: str) -> ImageDamagedError:
            return ImageDamagedError(f"{where}: {what}; the image cannot be opened.")

        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise bad("is not valid JSON") from exc
        if not isinstance(doc, dict):
            raise bad("is not a key header")
        if doc.get("scheme") != SCHEME or doc.get("cipher") != CIPHER:
            raise UnsupportedImageError(
                f"{where} names the scheme {printable(repr(doc.get('scheme')))} with "
                f"{printable(repr(doc.get('cipher')))}; this rescue reads {SCHEME} with {CIPHER}.",
                hint="Use a newer rescue to open it.",
            )
        kdf = doc.get("kdf")
        if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
            raise bad("names no Argon2id key derivation")
        try:
            salt = base64.b64decode(str(kdf.get("salt")), validate=True)
            wrapped = base64.b64decode(str(doc.get("data_key")), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise bad("holds a salt or key that is not base64") from exc
        ints = (kdf.get("time_cost"), kdf.get("memory_kib"), kdf.get("lanes"), doc.get("chunk"))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise bad("has key derivation settings that are not numbers")
        t, m, lanes, chunk = (int(v) for v in ints)  # type: ignore[arg-type]
        if not (1 <= t <= MAX_ARGON2_TIME and 8 * lanes <= m <= MAX_ARGON2_MEMORY_KIB):
            raise bad(f"asks for Argon2id with {t} passes and {m} KiB, beyond what rescue runs")
        if not 1 <= lanes <= 64 or chunk != CHUNK:
            raise bad(f"has {lanes} lanes and {chunk}-byte chunks, which rescue does not write")
        if len(salt) < 16 or len(wrapped) != NONCE + 32 + TAG:
            raise bad("has a salt or a sealed data key of the wrong length")
        image_id = doc.get("image_id")
        if not isinstance(image_id, str) or len(image_id) != 32:
            raise bad("has no image id")
        return cls(salt, t, m, lanes, wrapped, image_id, chunk)


def _kek(passphrase: bytes, header: KeyHeader) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # noqa: PLC0415

    kdf = Argon2id(
        salt=header.salt,
        length=32,
        iterations=header.time_cost,
        lanes=header.lanes,
        memory_cost=header.memory_kib,
    )
    return kdf.derive(passphrase)


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    return AESGCM(key)


def new_key_header(passphrase: bytes) -> tuple[KeyHeader, bytes]:
    """A fresh salt and data key for a new image: (its header, the data key)."""
    if not passphrase:
        raise WrongKeyError("An encrypted image needs a passphrase; an empty one is refused.")
    data_key = secrets.token_bytes(32)
    draft = KeyHeader(
        salt=secrets.token_bytes(16),
        time_cost=ARGON2_TIME,
        memory_kib=ARGON2_MEMORY_KIB,
        lanes=ARGON2_LANES,
        wrapped=b"",
        image_id=secrets.token_hex(16),
    )
    nonce = secrets.token_bytes(NONCE)
    aad = _KEY_AAD + draft.image_id.encode()
    wrapped = nonce + _aesgcm(_kek(passphrase, draft)).encrypt(nonce, data_key, aad)
    return KeyHeader(draft.salt, draft.time_cost, draft.memory_kib, draft.lanes, wrapped,
                     draft.image_id), data_key  # fmt: skip


def open_data_key(passphrase: bytes, header: KeyHeader) -> bytes:
    """The image's data key; WrongKeyError when ``passphrase`` is not the image's."""
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415

    nonce, body = header.wrapped[:NONCE], header.wrapped[NONCE:]
    try:
        return bytes(
            _aesgcm(_kek(passphrase, header)).decrypt(
                nonce, body, _KEY_AAD + header.image_id.encode()
            )
        )
    except InvalidTag:
        raise WrongKeyError(
            "The passphrase does not open this image; nothing was read or written.",
            hint="Check the passphrase (its file's first line is used, without the line end).",
        ) from None


def read_key_header(folder: Path) -> KeyHeader:
    raw = read_member(folder, KEY_FILE, 64 * 1024, "the key header")
    return KeyHeader.from_json(raw, f"{folder}/{KEY_FILE}")


def write_key_header(folder: Path, header: KeyHeader) -> None:
    write_durable(folder / KEY_FILE, header.to_json().encode(), new=True)


class Sealer:
    """The data key of one image: seals and opens its files. Never shows the key."""

    def __init__(self, data_key: bytes, image_id: str) -> None:
        self._key = data_key
        self.image_id = image_id

    def __repr__(self) -> str:
        return f"Sealer(image {self.image_id}, <key hidden>)"

    def key_for_pipe(self) -> bytes:
        """The image id and data key (:data:`PIPE_KEY_BYTES`), for a server process's
        standard input."""
        return self.image_id.encode() + self._key

    @classmethod
    def from_pipe(cls, data: bytes) -> Sealer:
        if len(data) != PIPE_KEY_BYTES:
            raise WrongKeyError("The image key sent to the image server is incomplete.")
        return cls(data[32:], data[:32].decode("ascii", errors="replace"))

    def file_cipher(self, file_id: bytes) -> AESGCM:
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: PLC0415

        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_FILE_INFO + file_id)
        return _aesgcm(hkdf.derive(self._key))

    def seal_bytes(self, name: str, data: bytes) -> bytes:
        """The whole sealed file of ``data`` (a small file: layout, manifest, map)."""
        header = new_file_header()
        cipher = self.file_cipher(header[8:24])
        out = [header]
        view = memoryview(data)
        count = max(1, -(-len(data) // CHUNK))
        for i in range(count):
            piece = view[i * CHUNK : (i + 1) * CHUNK]
            out.append(seal_chunk(cipher, header, name, index=i, final=i == count - 1, piece=piece))
        return b"".join(out)

    def open_bytes(self, name: str, sealed: bytes, where: str) -> bytes:
        """The plain bytes of a whole sealed file (every chunk authenticated)."""
        reader = ChunkOpener(self, name, len(sealed), lambda off, n: sealed[off : off + n], where)
        return b"".join(reader.chunk(i) for i in range(reader.chunks))


def new_file_header() -> bytes:
    return HEADER.pack(MAGIC, secrets.token_bytes(16), CHUNK, 0)


def _aad(header: bytes, name: str, index: int, final: bool) -> bytes:
    return header + struct.pack("<QB", index, 1 if final else 0) + name.encode()


def seal_chunk(
    cipher: AESGCM, header: bytes, name: str, *, index: int, final: bool,
    piece: bytes | bytearray | memoryview,
) -> bytes:  # fmt: skip
    nonce = secrets.token_bytes(NONCE)
    return nonce + cipher.encrypt(nonce, bytes(piece), _aad(header, name, index, final))


class ChunkOpener:
    """Random access to the plain bytes of one sealed file, through ``pread(offset, n)``
    on the sealed bytes. Safe from several threads (the last chunk opened is kept)."""

    def __init__(
        self,
        sealer: Sealer,
        name: str,
        sealed_bytes: int,
        pread: Callable[[int, int], bytes | bytearray],
        where: str | Callable[[int], tuple[str, int]],
        *,
        unfinished: bool = False,
    ) -> None:
        """``where`` names the sealed file in messages: a name, or a function giving the
        file and offset in it of a stored byte (split volumes). ``unfinished``: a stream
        whose capture was interrupted (no last chunk yet; a cut chunk at its end is
        left out)."""
        self._pread = pread
        self.name = name
        self.where = where
        head = bytes(pread(0, HEADER.size))
        if len(head) < HEADER.size:
            raise self._damaged(0, "is too short to be a sealed file")
        magic, file_id, chunk, _reserved = HEADER.unpack(head)
        if magic != MAGIC:
            raise self._damaged(0, "is not a sealed file (no RSCSEAL1 header)")
        if chunk != CHUNK:
            raise self._damaged(0, f"has {chunk}-byte chunks, not {CHUNK}")
        self.unfinished = unfinished
        if unfinished:
            size: int | None = max(0, (sealed_bytes - HEADER.size) // (chunk + OVERHEAD)) * chunk
        else:
            size = plain_size(sealed_bytes, chunk)
        if size is None:
            raise self._damaged(sealed_bytes, "ends in the middle of a chunk (cut short?)")
        self._header = head
        self.size = size
        self.chunks = -(-size // chunk) if unfinished else max(1, -(-size // chunk))
        self._cipher = sealer.file_cipher(file_id)
        self._lock = threading.Lock()
        self._last: tuple[int, bytes] | None = None
        self.chunk_size = chunk
        self.chunk_span = chunk + OVERHEAD

    @property
    def header(self) -> bytes:
        return self._header

    def reseal(self, index: int, data: bytes) -> bytes:
        """Chunk ``index`` sealed anew holding ``data`` (a fresh nonce)."""
        final = index == self.chunks - 1 and not self.unfinished
        return seal_chunk(self._cipher, self._header, self.name, index=index, final=final,
                          piece=data)  # fmt: skip

    def patched(self, offset: int, data: bytes) -> list[tuple[int, bytes]]:
        """(sealed offset, sealed chunk) of every chunk ``data`` at ``offset`` changes."""
        out = []
        pos = offset
        while pos < offset + len(data):
            index, inner = divmod(pos, CHUNK)
            plain = bytearray(self.chunk(index))
            take = min(len(plain) - inner, offset + len(data) - pos)
            plain[inner : inner + take] = data[pos - offset : pos - offset + take]
            out.append((self.sealed_offset(index), self.reseal(index, bytes(plain))))
            pos += take
        with self._lock:
            self._last = None
        return out

    def _damaged(self, offset: int, what: str) -> ImageDamagedError:
        if callable(self.where):
            place, inner = self.where(offset)
        else:
            place, inner = self.where, offset
        return ImageDamagedError(f"{place} {what} (the sealed chunk at byte {inner}).")

    def sealed_offset(self, index: int) -> int:
        return HEADER.size + index * (CHUNK + OVERHEAD)

    def chunk(self, index: int) -> bytes:
        """The plain bytes of chunk ``index``, authenticated."""
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415

        with self._lock:
            if self._last is not None and self._last[0] == index:
                return self._last[1]
        final = index == self.chunks - 1 and not self.unfinished
        plain = self.size - index * CHUNK if final else CHUNK
        at = self.sealed_offset(index)
        raw = bytes(self._pread(at, plain + OVERHEAD))
        if len(raw) != plain + OVERHEAD:
            raise self._damaged(at, "was cut short")
        try:
            data = self._cipher.decrypt(
                raw[:NONCE], raw[NONCE:], _aad(self._header, self.name, index, final)
            )
        except InvalidTag:
            raise self._damaged(
                at,
                "fails its authentication: it was damaged or altered, or it is not this "
                "image's file",
            ) from None
        with self._lock:
            self._last = (index, data)
        return data

    def read_at(self, offset: int, n: int) -> bytes:
        """``n`` plain bytes at ``offset`` (fewer at the end)."""
        n = max(0, min(n, self.size - offset))
        out = []
        pos = offset
        while pos < offset + n:
            index, inner = divmod(pos, CHUNK)
            data = self.chunk(index)
            piece = data[inner : inner + offset + n - pos]
            out.append(piece)
            pos += len(piece)
        return b"".join(out)


def sealed_name(name: str) -> str:
    return name + SUFFIX


PLAIN_MEMBERS = frozenset({"rescue.json", KEY_FILE, "rescue.incomplete", NOTE_FILE})
"""The files of an encrypted image that are not sealed: the outer manifest (sizes and
hashes of the sealed files), the key header, the incomplete marker and the note."""
_STORED_VOLUME = re.compile(r"(.+)\.sealed(?:\.[a-z]{2})?")


class SealedImage:
    """An unlocked encrypted image folder, as :mod:`rescue.image.folder` reads it."""

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer

    def __repr__(self) -> str:
        return f"SealedImage({self.sealer!r})"

    def is_sealed(self, name: str) -> bool:
        return name not in PLAIN_MEMBERS and not name.startswith(".") and SUFFIX not in name

    def stored_name(self, name: str) -> str:
        return sealed_name(name)

    def stream_name(self, stored: str) -> str | None:
        m = _STORED_VOLUME.fullmatch(stored)
        return m.group(1) if m else None

    def read(self, folder: Path, name: str, limit: int, what: str) -> bytes:
        raw = read_stored(folder, sealed_name(name), sealed_size(limit), what)
        return self.sealer.open_bytes(name, raw, f"{folder}/{printable(sealed_name(name))}")

    def opener(
        self,
        name: str,
        sealed_bytes: int,
        pread: Callable[[int, int], bytes],
        where: str | Callable[[int], tuple[str, int]],
        *,
        unfinished: bool = False,
    ) -> ChunkOpener:
        return ChunkOpener(self.sealer, name, sealed_bytes, pread, where, unfinished=unfinished)


def unlock_folder(folder: Path, sealer: Sealer) -> None:
    """Read ``folder`` as the plain image its sealed files hold (for this process)."""
    register_sealed(folder, SealedImage(sealer))


def is_encrypted(folder: Path) -> bool:
    return has_member(folder, KEY_FILE)


def unlock_image(folder: Path, passphrase: bytes) -> Sealer:
    """Open the encrypted image in ``folder`` with ``passphrase`` (WrongKeyError if it is
    not the image's): from now on this process reads its files unsealed."""
    header = read_key_header(folder)
    _check_key_header(folder)
    sealer = Sealer(open_data_key(passphrase, header), header.image_id)
    unlock_folder(folder, sealer)
    return sealer


def _check_key_header(folder: Path) -> None:
    """A finished image lists its key header's hash: a damaged header is named as damage,
    not mistaken for a wrong passphrase."""
    try:
        outer = json.loads(read_member(folder, "rescue.json", 16 << 20, "the manifest"))
    except (ImageDamagedError, ValueError, RecursionError):
        return  # no finished manifest (an interrupted capture) or one a reader refuses later
    files = outer.get("files") if isinstance(outer, dict) else None
    entry = next((f for f in files or [] if isinstance(f, dict) and f.get("name") == KEY_FILE),
                 None)  # fmt: skip
    if entry is None:
        return
    raw = read_member(folder, KEY_FILE, 64 * 1024, "the key header")
    if hashlib.sha256(raw).hexdigest() != entry.get("sha256"):
        raise ImageDamagedError(
            f"{folder}/{KEY_FILE} does not match its SHA-256 in rescue.json: the key header "
            "is damaged, and without it the image cannot be opened.",
            hint="Use another copy of the image (the key header is the same in every copy).",
        )


NOTE = """\
This folder is a disk image encrypted by rescue ({scheme}, {cipher}).
Every file but this note, rescue.json and {key_file} is sealed (NAME.sealed).
Stock Clonezilla cannot read it. rescue restores, verifies, mounts and
extracts it with its passphrase, and turns it into a plain Clonezilla image:

    rescue decrypt THIS_FOLDER NEW_FOLDER
"""


def start_encrypted_folder(folder: Path, header: KeyHeader, data_key: bytes) -> Sealer:
    """Write the key header and the note into the new image folder; unlock it."""
    write_key_header(folder, header)
    note = NOTE.format(scheme=SCHEME, cipher=CIPHER, key_file=KEY_FILE).encode()
    write_durable(folder / NOTE_FILE, note, new=True)
    sealer = Sealer(data_key, header.image_id)
    unlock_folder(folder, sealer)
    return sealer


def folder_sealer(folder: Path) -> Sealer | None:
    handler = sealed_folder(folder)
    return handler.sealer if isinstance(handler, SealedImage) else None


class SealedStreamWriter(io.RawIOBase):
    """Seals a stream as it is written, chunk by chunk, into split volumes.

    Only whole chunks are written until :meth:`close`, which seals the last one
    (marked last); :attr:`durable` counts the plain bytes of the chunks on disk.
    """

    def __init__(
        self,
        volumes: VolumeWriter,
        sealer: Sealer,
        name: str,
        *,
        header: bytes | None = None,
        next_index: int = 0,
        pending: bytes = b"",
    ) -> None:
        super().__init__()
        self._volumes = volumes
        self._name = name
        self._header = header or new_file_header()
        self._cipher = sealer.file_cipher(self._header[8:24])
        self._index = next_index
        self._buf = bytearray(pending)
        if header is None:
            volumes.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            if len(self._buf) == CHUNK:  # a whole chunk is sealed once it is known not last
                self._seal(final=False)
            take = min(len(view), CHUNK - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
        return total

    def _seal(self, *, final: bool) -> None:
        sealed = seal_chunk(self._cipher, self._header, self._name, index=self._index,
                            final=final, piece=self._buf)  # fmt: skip
        self._volumes.write(sealed)
        self._index += 1
        self._buf = bytearray()

    @property
    def durable(self) -> int:
        chunks = max(0, (self._volumes.durable - HEADER.size) // (CHUNK + OVERHEAD))
        return chunks * CHUNK

    def sync(self) -> None:
        self._volumes.sync()

    def close(self, fsync: bool = True) -> None:
        """Seal the last chunk and close the volumes (``fsync=False``, after an error: the
        last chunk is left out, as an interrupted capture leaves it)."""
        if self.closed:
            return
        try:
            if fsync:
                self._seal(final=True)
        finally:
            self._volumes.close(fsync=fsync)
            super().close()

    @property
    def files(self) -> list[tuple[Path, int, str]]:
        return self._volumes.files


def stream_writer(
    base: Path, split: int | None, *, resume_at: int | None = None
) -> VolumeWriter | SealedStreamWriter:
    """The writer of a new stream (or of one resumed at ``resume_at`` plain bytes): its
    volumes, sealed in an encrypted image's folder."""
    sealer = folder_sealer(base.parent)
    if sealer is None:
        return VolumeWriter(base, split, resume_at=resume_at)
    stored = base.with_name(sealed_name(base.name))
    if resume_at is None:
        return SealedStreamWriter(VolumeWriter(stored, split), sealer, base.name)
    index, inner = divmod(resume_at, CHUNK)
    with VolumeReader(volume_paths(base), unfinished=True) as kept:
        opener = kept._opener
        assert opener is not None
        header = opener.header
        pending = opener.chunk(index)[:inner] if inner else b""
        at = opener.sealed_offset(index)
    volumes = VolumeWriter(stored, split, resume_at=at)
    return SealedStreamWriter(volumes, sealer, base.name, header=header, next_index=index,
                              pending=pending)  # fmt: skip


def write_sealed_member(folder: Path, name: str, data: bytes, sealer: Sealer) -> None:
    """Seal ``data`` as ``NAME.sealed`` in ``folder``: new file, fsync, rename."""
    final = folder / sealed_name(name)
    tmp = folder / f".{sealed_name(name)}.tmp"
    write_durable(tmp, sealer.seal_bytes(name, data))
    tmp.replace(final)
