"""Which URLs a node fetches from an origin when a peer asks it to (the `peer_origins` policy).

A peer that holds the credential can name any URL in a GET_BLOCK sent to the block's owner. The
owner fetches only URLs its operator allows: with `peer_origins` listed, exactly the URLs under
those prefixes; with none (the default, so a zone works out of the box), a URL of a remote
storage scheme whose host is not this host (loopback), a link-local address (the cloud metadata
endpoint 169.254.169.254) or another address that cannot name a shared origin; `file://` and
every other local or chained fsspec scheme are refused. Pure: no name is resolved (a DNS name
that resolves to loopback passes the default; list the prefixes to shut that too).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Sequence
from urllib.parse import urlsplit

__all__ = ["REMOTE_SCHEMES", "refusal", "prefix_matches"]

# Schemes that name shared remote storage (fsspec protocol names).
REMOTE_SCHEMES = frozenset({"http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss",
                            "adl", "hdfs", "webhdfs", "hf"})
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def prefix_matches(url: str, prefix: str) -> bool:
    """`url` starts with `prefix`, and a prefix that ends inside a host name does not match a
    longer host ("http://origin" matches "http://origin:80/x", not "http://origin.evil/x")."""
    if not prefix or not url.startswith(prefix):
        return False
    if len(url) == len(prefix) or prefix.endswith(("/", ":")):
        return True
    scheme, sep, rest = prefix.partition("://")
    if sep and "/" not in rest:  # the prefix ends in the authority: the host must end there
        return url[len(prefix)] in "/:?#"
    return True


def _host_refusal(host: str) -> str | None:
    """Why `host` cannot be a shared origin, or None."""
    h = host.strip("[]").rstrip(".").lower()
    if not h:
        return "no host"
    if h in _LOCAL_NAMES or h.endswith(".localhost"):
        return f"host {host} is this host"
    try:
        ip = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        try:  # the shorthand and numeric forms libc accepts too: 127.1, 2130706433, 0x7f.1
            ip = ipaddress.ip_address(socket.inet_aton(h))
        except OSError:
            return None  # a DNS name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{host} is a loopback address"
    if ip.is_link_local:
        return f"{host} is a link-local address (cloud metadata lives there)"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return f"{host} is not a unicast address"
    return None


def refusal(url: str, allowed: Sequence[str] = ()) -> str | None:
    """Why a peer may not make this node fetch `url`, or None when it may.

    With prefixes listed in `allowed`, exactly the URLs that start with one of them. With none,
    the default: a remote storage scheme, not naming this host or a link-local address."""
    if allowed:
        if any(prefix_matches(url, p) for p in allowed):
            return None
        return "not under any prefix listed in peer_origins"
    if "::" in url.partition("://")[0]:
        return "chained fsspec URLs are not fetched for peers"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as e:
        return f"not a URL: {e}"
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        return f"scheme {scheme or '(none)'}:// is not fetched for peers"
    if scheme in ("http", "https", "webhdfs"):
        why = _host_refusal(host or "")
        if why is not None:
            return why
    return None
