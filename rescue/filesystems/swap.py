"""Linux swap: its registry entry (:data:`SWAP`). It is never imaged.

A capture records a swap partition's UUID and label (Clonezilla's
``swappt-PART.info``), and a restore makes it anew with mkswap, so that the
restored system finds it by the same identity.
"""

from __future__ import annotations

from typing import ClassVar
from uuid import uuid4

from rescue.filesystems.interface import Filesystem, Op, Reasons, Tools
from rescue.system import run


class Swap(Filesystem):
    """Linux swap space: recreated from its UUID and label, never imaged, mounted or resized."""

    names = ("swap",)
    human_name = "Linux swap"
    tools: ClassVar[Tools] = {Op.CREATE: ("mkswap",), Op.NEW_ID: ("swaplabel",)}
    unsupported: ClassVar[Reasons] = {
        Op.ALLOCATION: "Linux swap holds nothing worth keeping: it is recreated on restore "
        "(same UUID and label), not imaged.",
        Op.BROWSE: "Linux swap holds no files: there is nothing to browse.",
        Op.MOUNT_RW: "Linux swap holds no files: it cannot hold images either.",
        Op.CHECK: "Linux swap has nothing to check: it is made anew on restore.",
        Op.REPAIR: "Linux swap has nothing to mend: it is made anew on restore.",
        Op.GROW: "Linux swap keeps its size when its partition grows (run mkswap to use "
        "the new room).",
        Op.SHRINK: "Linux swap is not shrunk; it is made anew on restore.",
        Op.REBUILD: "Linux swap is not rebuilt smaller; it is made anew on restore.",
        Op.MINIMUM: "Linux swap has no smaller size: it keeps its partition's.",
        Op.DAMAGE: "Linux swap holds no files.",
        Op.SET_START: "Linux swap does not record where its partition starts.",
    }

    def new_id(self, dev: str) -> str | None:
        new = str(uuid4())
        run(["swaplabel", "-U", new, dev])
        return new

    def create(
        self, path: str, *, offset: int, size: int, uuid: str | None, label: str | None
    ) -> None:
        """mkswap with the recorded UUID and label, on ``path`` or at ``offset`` of a disk file."""
        args = ["mkswap"]
        if uuid:
            args += ["-U", uuid]
        if label:
            args += ["-L", label]
        if offset:
            # swap inside a disk file: place it at the partition and give its size (KiB)
            run([*args, "-f", "--offset", str(offset), path, str(size // 1024)])
            return
        run([*args, path])


SWAP = Swap()
