"""What can go wrong with a share, each in words a technician can act on."""

from __future__ import annotations

from rescue.errors import EXIT_REFUSED, RescueError


class ShareError(RescueError):
    """A share could not be mounted, read or written."""


class ShareAuthError(ShareError):
    """The server refused the user name, the password or the key; nothing was written."""

    exit_code = EXIT_REFUSED


class ShareNotFoundError(ShareError):
    """The share, export or folder does not exist on the server (or is not offered to us)."""

    exit_code = EXIT_REFUSED


class ServerUnreachableError(ShareError):
    """No answer from the server: wrong address, no route, nothing listening, or a timeout."""


class DialectRefusedError(ShareError):
    """The server speaks none of the protocol versions rescue offers (SMB dialect, NFS version)."""


class ShareFullError(ShareError):
    """The share has no space left for the image."""


class ConnectionDroppedError(ShareError):
    """The connection to the share broke while its files were in use."""


class HostKeyError(ShareError):
    """An SSH server's key is unknown and was not confirmed, or differs from the one expected."""

    exit_code = EXIT_REFUSED


class ClientMissingError(ShareError):
    """This system cannot mount this kind of share (no kernel support or no client program)."""
