"""Browsing an image without restoring it.

A partition of an image is served as a read-only block device
(:mod:`rescue.imagedev`) and its filesystem mounted read-only on top
(:mod:`rescue.browse.mounts`). On top of the mount: listing and reading inside
the partition without escaping it (:mod:`rescue.browse.paths`), copying files
out (:mod:`rescue.browse.extract`) and the browsing session the screens and
the CLI use (:mod:`rescue.browse.session`).
"""
