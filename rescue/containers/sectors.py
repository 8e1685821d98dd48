"""Sector ciphers as dm-crypt applies them: each sector on its own, at a fixed place.

A cipher spec is cryptsetup's ``cipher-mode-iv`` string (``aes-xts-plain64``,
``aes-cbc-essiv:sha256``). Each sector of ``sector_size`` bytes is encrypted
alone with an IV made from its number, so any sector can be decrypted without
its neighbours, and a copy of the ciphertext at the same offset decrypts the
same. Sector numbers for the IV count 512-byte units, also when the encryption
sector is larger (dm-crypt without ``iv_large_sectors``, as LUKS2 uses it): the
4 KiB sector n has IV 8n.

The bulk work runs in OpenSSL through ``cryptography``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rescue.errors import FilesystemError

SUPPORTED = ("aes-xts-plain64", "aes-xts-plain", "aes-cbc-essiv:sha256", "aes-cbc-plain64",
             "aes-cbc-plain")  # fmt: skip
"""The cipher specs rescue decrypts (LUKS defaults since 2013, and the older CBC ones)."""


def _primitives() -> Any:
    """OpenSSL's ciphers, loaded when a volume is first decrypted (not at every start)."""
    from cryptography.hazmat.primitives import ciphers  # noqa: PLC0415

    return ciphers


class UnsupportedCipherError(FilesystemError):
    """The volume uses a cipher rescue cannot decrypt: it is stored whole."""


@dataclass
class SectorCipher:
    """Decrypts sectors of one volume: ``decrypt(first_sector, data)``."""

    spec: str
    key: bytes = field(repr=False)
    sector_size: int = 512
    iv_shift: int = 0
    """log2(sector_size / 512) when IVs count 512-byte units (LUKS), 0 when they count
    the volume's own sectors."""
    iv_offset: int = 0
    """Added to every sector number (LUKS2 ``iv_tweak``)."""

    def __post_init__(self) -> None:
        parts = self.spec.lower().split("-", 2)
        if len(parts) != 3 or self.spec.lower() not in SUPPORTED:
            raise UnsupportedCipherError(
                f"the cipher {self.spec} is not one rescue decrypts "
                f"(it reads {', '.join(SUPPORTED)})"
            )
        _, self._mode, self._iv = parts
        if self._mode == "xts":
            if len(self.key) not in (32, 64):
                raise UnsupportedCipherError(f"an AES-XTS key of {len(self.key)} bytes")
        elif len(self.key) not in (16, 24, 32):
            raise UnsupportedCipherError(f"an AES-CBC key of {len(self.key)} bytes")
        self._essiv: Callable[[bytes], bytes] | None = None
        if self._iv == "essiv:sha256":
            salt = hashlib.sha256(self.key).digest()
            c = _primitives()
            # ESSIV is AES (ECB) of the sector number, by definition
            enc = c.Cipher(c.algorithms.AES(salt), c.modes.ECB()).encryptor()
            self._essiv = enc.update

    def _iv_for(self, sector: int) -> bytes:
        n = (sector << self.iv_shift) + self.iv_offset
        if self._iv == "plain":
            raw = struct.pack("<I", n & 0xFFFFFFFF) + bytes(12)
        else:
            raw = struct.pack("<Q", n & 0xFFFFFFFFFFFFFFFF) + bytes(8)
        if self._essiv is not None:
            return self._essiv(raw)
        return raw

    def decrypt(self, first_sector: int, data: bytes) -> bytes:
        """Plaintext of whole sectors ``data`` starting at sector ``first_sector``."""
        size = self.sector_size
        if len(data) % size:
            raise ValueError("decrypt takes whole sectors")
        out = bytearray(len(data))
        view = memoryview(data)
        c = _primitives()
        algo = c.algorithms.AES(self.key)
        for i in range(len(data) // size):
            iv = self._iv_for(first_sector + i)
            if self._mode == "xts":
                dec = c.Cipher(algo, c.modes.XTS(iv)).decryptor()
            else:
                dec = c.Cipher(algo, c.modes.CBC(iv)).decryptor()
            out[i * size : (i + 1) * size] = dec.update(view[i * size : (i + 1) * size])
        return bytes(out)
