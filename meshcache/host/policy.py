"""Who a local client is (SO_PEERCRED) and what it may make the daemon read.

The socket's mode and group decide who may connect. Beyond that, a client must not be able to
read through the daemon what it could not read itself: a file:// origin is served only when the
client's uid/gids may read the file under its permission bits (root may read anything).
Storage options (origin credentials) from clients are refused unless the operator allows them:
the daemon reads origins with its own configuration.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class PeerCred:
    """The process at the other end of a Unix socket, as the kernel tells it."""

    pid: int
    uid: int
    gid: int

    def groups(self) -> set[int]:
        """The client's supplementary groups (from /proc; its primary gid when unreadable)."""
        out = {self.gid}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("Groups:"):
                        out.update(int(g) for g in line.split()[1:])
        except (OSError, ValueError):
            pass
        return out


def peer_cred(sock: socket.socket) -> PeerCred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return PeerCred(*struct.unpack("3i", raw))


def may_read(url: str, cred: PeerCred) -> bool:
    """False when `url` is a local file the client could not read itself."""
    parts = urlsplit(url)
    if parts.scheme not in ("", "file", "local"):
        return True
    if cred.uid == 0:
        return True
    path = parts.path if parts.scheme else url
    try:
        st = os.stat(path)
    except OSError:
        return True  # the origin's own error (not found) says the same to anyone
    if not stat.S_ISREG(st.st_mode):
        return False
    groups = cred.groups()
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    while True:  # every directory on the way must let the client through (x bit)
        try:
            if not _allowed(os.stat(parent), cred.uid, groups, 1):
                return False
        except OSError:
            return False
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    return _allowed(st, cred.uid, groups, 4)


def _allowed(st: os.stat_result, uid: int, groups: set[int], bit: int) -> bool:
    """Permission bit `bit` (4 read, 1 search) for uid/groups under the mode's classes."""
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in groups:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)
