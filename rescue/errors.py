"""Every error a technician can meet, each with a message to act on and an exit code.

Exit codes are a public interface for scripts (documented in README.md):

====  ==========================================================
0     success
1     the operation failed (I/O error, damaged image, tool failed)
2     refused or bad input (nothing was written)
3     finished, but some sectors could not be read
130   cancelled by the user
====  ==========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNREADABLE = 3
EXIT_CANCELLED = 130


class RescueError(Exception):
    """Base of all errors the tool reports to a user instead of a traceback."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class RefusedError(RescueError):
    """A safety rule forbids the operation; nothing was written."""

    exit_code = EXIT_REFUSED


class BadInputError(RescueError):
    """The command line or a named file is not what the command needs."""

    exit_code = EXIT_REFUSED


class DeviceError(RescueError):
    """A disk or partition could not be found, opened, read or written."""


class DeviceGoneError(DeviceError):
    """The disk disappeared while it was being read (unplugged, or its controller died)."""


class DeviceNotFoundError(DeviceError):
    """The named device does not exist."""

    exit_code = EXIT_REFUSED


class FilesystemError(RescueError):
    """A filesystem's on-disk structures are damaged or of an unsupported kind."""


class UnsupportedOperationError(RescueError):
    """The filesystem cannot do what was asked (exFAT cannot shrink, swap holds no files...).

    The message says why and what to do instead; nothing was written.
    """

    exit_code = EXIT_REFUSED


class ExternalToolError(RescueError):
    """A system program (sfdisk, mkswap, ...) is missing or failed."""


class ImageError(RescueError):
    """Base of errors about an image directory."""


class NotAnImageError(ImageError):
    """The folder is not an image at all."""

    exit_code = EXIT_REFUSED


class IncompleteImageError(ImageError):
    """The image has no manifest: its capture never finished."""


class UnsupportedImageError(ImageError):
    """The image was written by a newer format version or uses an unknown feature."""

    exit_code = EXIT_REFUSED


class ImageLockedError(ImageError):
    """The image is encrypted and no passphrase was given for it."""

    exit_code = EXIT_REFUSED


class ImageDamagedError(ImageError):
    """A stream or file of the image does not match its checksums or is truncated."""

    def __init__(self, message: str, *, hint: str | None = None, offset: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.offset = offset
        """Byte offset in the stored (compressed) stream where the damage was found."""


class BaseImageError(ImageError):
    """An incremental image's base is missing, changed, or not an image it can build on."""


class CancelledError(RescueError):
    """The user cancelled the operation."""

    exit_code = EXIT_CANCELLED

    def __init__(self, message: str = "Cancelled.", *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)


class WrongKeyError(RescueError):
    """The key given for an encrypted volume does not open it; nothing was written."""

    exit_code = EXIT_REFUSED
