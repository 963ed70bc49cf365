"""Object versions: an origin URL plus the version token its stat returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import blake3

_TOKEN_FIELDS = ("VersionId", "ETag", "etag", "md5", "Content-MD5", "Digest")


@dataclass(frozen=True)
class ObjectVersion:
    """One immutable version of one object: the cache never mixes bytes of two versions."""

    url: str
    token: str
    size: int
    key: bytes = field(init=False, repr=False, compare=False)
    """32 bytes naming this version (manifest file names, owners)."""

    def __post_init__(self) -> None:
        key = blake3.blake3(f"{self.url}\0{self.token}\0{self.size}".encode()).digest()
        object.__setattr__(self, "key", key)

    @property
    def etag(self) -> str | None:
        """The origin's ETag when the token is one (used for If-Match on ranged reads)."""
        return self.token[5:] if self.token.startswith("etag:") else None

    @property
    def version_id(self) -> str | None:
        """The origin's object version id when the token is one (versioned S3 buckets)."""
        return self.token[4:] if self.token.startswith("vid:") else None


def url_key(url: str) -> bytes:
    """32 bytes naming a URL whatever its version: which zone member is asked first for the
    URL's last known version (rendezvous)."""
    return blake3.blake3(f"url\0{url}".encode()).digest()


def token_from_info(info: Mapping[str, Any]) -> str:
    """The version token of an fsspec `info()` result: ETag-like fields first, else mtime+size."""
    vid = info.get("VersionId")
    if vid and vid != "null":
        return f"vid:{vid}"
    for name in ("ETag", "etag", "e_tag"):
        value = info.get(name)
        if value:
            return f"etag:{value}"
    for name in ("mtime", "LastModified", "last_modified", "Last-Modified", "modified", "created"):
        value = info.get(name)
        if value:
            extra = f":ino{info['ino']}" if info.get("ino") else ""
            return f"mtime:{value}{extra}:size{info.get('size')}"
    for name in ("md5", "Content-MD5", "Digest", "checksum", "crc32c"):
        value = info.get(name)
        if value:
            return f"sum:{value}"
    return f"size:{info.get('size')}"
