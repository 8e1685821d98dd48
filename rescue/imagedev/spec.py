"""What a FUSE server serves: written by the mounting command, read by the server."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

PARTITION_FILE = "partition"
"""The file in a server's FUSE folder that is the partition."""
WRITTEN_FILE = "written"
"""Beside it when it is writable: which 4 KiB blocks were written (one bit each)."""

SPEC_NAME = "spec.json"


@dataclass(frozen=True)
class ServerSpec:
    stream: Path
    """The stream as the image stores it (split volumes found by name)."""
    raw: bool
    """A raw (dd) stream rather than a partclone one."""
    size: int | None
    """Size of the served file: the partition's size (None: what the stream records)."""
    table: Path | None = None
    """A seek table kept apart from the stream (an index built for it)."""
    copy: Path | None = None
    """A seekable copy of a stream that cannot be read at random (an index built for it)."""
    tail: bytes | None = None
    tail_offset: int = 0
    overlay: Path | None = None
    """Serve the partition writable: writes go to this scratch file (created, then unlinked)."""
    inner: bool = False
    """Serve a volume inside the partition's layers (an unlocked LUKS volume, an LV) instead
    of the partition; the key, if any, comes on the server's standard input."""
    volume: str | None = None
    """Which inner volume (``VG/LV``); None: the only one."""
    sealed: bool = False
    """The stream is an encrypted image's: its key comes first on the server's standard
    input (:meth:`rescue.image.sealing.Sealer.key_for_pipe`)."""
    chain: tuple[tuple[Path, Path], ...] = ()
    """For a partition of an incremental image: (stream, region list) of each image of its
    chain, newest first (``stream`` is the first); empty for a stream that holds it all."""
    region_size: int = 0

    def save(self, state_dir: Path) -> None:
        doc = {
            "stream": str(self.stream),
            "raw": self.raw,
            "size": self.size,
            "table": str(self.table) if self.table else None,
            "copy": str(self.copy) if self.copy else None,
            "tail": base64.b64encode(self.tail).decode() if self.tail else None,
            "tail_offset": self.tail_offset,
            "overlay": str(self.overlay) if self.overlay else None,
            "inner": self.inner,
            "volume": self.volume,
            "sealed": self.sealed,
            "chain": [[str(a), str(b)] for a, b in self.chain],
            "region_size": self.region_size,
        }
        tmp = state_dir / (SPEC_NAME + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, state_dir / SPEC_NAME)

    @classmethod
    def load(cls, state_dir: Path) -> ServerSpec:
        doc = json.loads((state_dir / SPEC_NAME).read_text())
        return cls(
            stream=Path(doc["stream"]),
            raw=bool(doc["raw"]),
            size=int(doc["size"]) if doc.get("size") is not None else None,
            table=Path(doc["table"]) if doc.get("table") else None,
            copy=Path(doc["copy"]) if doc.get("copy") else None,
            tail=base64.b64decode(doc["tail"]) if doc.get("tail") else None,
            tail_offset=int(doc.get("tail_offset", 0)),
            overlay=Path(doc["overlay"]) if doc.get("overlay") else None,
            inner=bool(doc.get("inner", False)),
            volume=str(doc["volume"]) if doc.get("volume") is not None else None,
            sealed=bool(doc.get("sealed", False)),
            chain=tuple((Path(a), Path(b)) for a, b in doc.get("chain", [])),
            region_size=int(doc.get("region_size", 0)),
        )
