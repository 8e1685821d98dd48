"""A partition of an image served as a block device, without restoring it.

The partition becomes one file through a FUSE server (:mod:`.server`) that
reads the image at random (:mod:`.index` builds a seek index for streams that
cannot be read so), optionally writable through a copy-on-write overlay
(:mod:`.overlay`) so a resizer can work on it while the image stays unchanged;
a loop device over that file makes it a block device. :mod:`.served` starts and
records each piece and takes every piece down again, also after a crash.
Browsing (:mod:`rescue.browse`) and shrinking (:mod:`rescue.operations.shrink`)
are built on it.
"""
