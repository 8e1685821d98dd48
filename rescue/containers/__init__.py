"""Volume layers that sit between a partition and its filesystems.

A *container* is a layer whose content is one or more block devices with
filesystems of their own: an encrypted volume (LUKS, BitLocker), an LVM
physical volume, a member of a software RAID. Each type has one module here
that recognises it from its own signature (:mod:`.luks`, :mod:`.bitlocker`,
:mod:`.lvm`, :mod:`.md`) and says what it knows without a key: its type,
version and UUID, and where its metadata lies.

:func:`rescue.containers.stack.allocation_for` is what capture asks for the
used blocks of a partition: a container is recognised before any filesystem
(a BitLocker volume has a FAT-like boot sector, and must not be read as a
damaged FAT). Today every container is stored whole, with the reason in the
manifest and on screen; reading through a layer (unlocking, mapping the inner
filesystems' used ranges down to the partition) plugs in as a ``map_used``
step of that layer's module — see docs/ARCHITECTURE.md.
"""
