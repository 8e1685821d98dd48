"""The image folder and what it holds, as docs/FORMAT.md specifies it.

:mod:`.names` declares every file name of an image folder; :mod:`.layout`
writes and reads Clonezilla's files (partition table, lists, log);
:mod:`.manifest` is rescue's own ``rescue.json``; :mod:`.partclone` the
partition stream format and :mod:`.seekable` its seekable zstd framing;
:mod:`.volumes` splits a stream into volume files and joins them again;
:mod:`.view` reads any image folder, rescue's or Clonezilla's, into one model
(:class:`~.view.ImageView`); :mod:`.streams` gives a stored stream's
decompressed bytes (and checks one before a restore) and :mod:`.random_access`
reads a partition at any offset. :mod:`.folder` opens the files of an image
folder, which may be damaged or hostile: docs/FORMAT.md section 9 lists what
every reader here enforces. Nothing here touches a disk: the image engine works
on files.
"""
