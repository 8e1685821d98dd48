"""Browsing an image without restoring it.

A partition of an image becomes a read-only file through a FUSE server
(:mod:`rescue.browse.server`), a read-only loop device over that file, and a
read-only mount of the filesystem (:mod:`rescue.browse.mounts`). On top of the
mount: listing and reading inside the partition without escaping it
(:mod:`rescue.browse.paths`) and copying files out (:mod:`rescue.browse.extract`).
"""
