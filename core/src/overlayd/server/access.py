"""Who may use the daemon: the peer's credentials against the allowed uids and gids.

Root, the daemon's own user and ``allowed_uids`` may connect, and so may any
member of ``allowed_gids`` or of the socket's group. The credentials are read
from the socket (:func:`overlayd.connections.peer_credentials`).
"""

from __future__ import annotations

import os
import socket
import sys

from overlayd.connections import peer_credentials

# POSIX only: the daemon serves a Unix socket; serving the Windows named pipe is
# not supported yet. (This assert also makes mypy --platform win32 skip the rest.)
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

__all__ = ["authorise"]


def authorise(
    sock: socket.socket, allowed_uids: set[int], allowed_gids: set[int]
) -> tuple[bool, str]:
    """Whether the peer may use the daemon, and who it is (for logs)."""
    try:
        creds = peer_credentials(sock)
    except OSError as exc:
        return False, f"a peer whose credentials are unreadable ({exc})"
    who = str(creds)
    if creds.uid in allowed_uids or creds.gid in allowed_gids:
        return True, who
    if not allowed_gids:
        return False, who
    groups = creds.groups
    if groups is None:
        # Neither SO_PEERGROUPS nor /proc answered: what /etc/group says.
        try:
            groups = frozenset(os.getgrouplist(_user_name(creds.uid), creds.gid))
        except (KeyError, OSError):
            groups = frozenset()
    return bool(groups & allowed_gids), who


def _user_name(uid: int) -> str:
    import pwd

    return pwd.getpwuid(uid).pw_name
