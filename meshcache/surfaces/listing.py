"""Directory listings of an origin URL prefix through fsspec, cached for `metadata_ttl`.

Both surfaces list through this: the S3 gateway (ListObjectsV2) and the FUSE mount (readdir).
Blocking (fsspec's sync API); callers run it in a worker thread.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import quote

import fsspec

from meshcache.core.ttlcache import TTLCache
from meshcache.read.origin import ObjectNotFound, OriginError, normalize_url, split_protocol

MAX_ENTRIES = 100_000  # a listing larger than this is cut (and logged by callers)


@dataclass(frozen=True)
class Item:
    """One name under the prefix: `path` relative to it ('a/b.bin'), a file or a directory."""

    path: str
    size: int  # -1: the origin's listing does not say (HTTP index pages)
    mtime: float
    etag: str
    is_dir: bool


def _mtime(info: Mapping[str, Any]) -> float:
    for name in ("mtime", "LastModified", "last_modified", "modified", "created"):
        v = info.get(name)
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, datetime.datetime):
            return v.timestamp()
        if isinstance(v, str):
            try:
                return datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


class Listing:
    """Lists one origin prefix (e.g. 's3://bucket/models/' or 'https://host/data/')."""

    def __init__(self, prefix: str, options: Mapping[str, Any] | None, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        prefix = normalize_url(prefix)
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.protocol, _ = split_protocol(self.prefix)
        self.options = dict(options or {})
        self._clock = clock
        self._cache: TTLCache[tuple[str, bool], list[Item]] = TTLCache(ttl, 1024)
        self._lock = threading.Lock()
        self._fs: fsspec.AbstractFileSystem | None = None
        self._index: dict[str, tuple[list[Item], dict[str, Item]]] = {}

    def url(self, path: str) -> str:
        """The origin URL of a relative path (quoted for HTTP origins)."""
        path = path.lstrip("/")
        if self.protocol in ("http", "https"):
            return self.prefix + quote(path, safe="/~")
        return self.prefix + path

    def _filesystem(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            self._fs = fsspec.filesystem(self.protocol, **self.options)
        return self._fs

    def _root(self, fs: fsspec.AbstractFileSystem, rel_dir: str) -> str:
        url = self.url(rel_dir.strip("/") + "/" if rel_dir.strip("/") else "")
        if self.protocol in ("http", "https"):
            return url
        return fs._strip_protocol(url).rstrip("/")

    def _rel(self, fs: fsspec.AbstractFileSystem, name: str) -> str:
        base = self._root(fs, "")
        if self.protocol in ("http", "https"):
            from urllib.parse import unquote

            return unquote(name[len(base):]) if name.startswith(base) else ""
        name = fs._strip_protocol(name)
        return name[len(base):].lstrip("/") if name.startswith(base) else ""

    def list(self, rel_dir: str = "", recursive: bool = False) -> list[Item]:
        """The files (and, when not recursive, directories) directly under `rel_dir`, or every
        file below it; cached for the TTL. ObjectNotFound when the directory does not exist."""
        key = (rel_dir.strip("/"), recursive)
        with self._lock:
            hit = self._cache.get(key, self._clock())
        if hit is not None:
            return hit
        fs = self._filesystem()
        root = self._root(fs, rel_dir)
        try:
            if recursive:
                infos = list(fs.find(root, detail=True).values())
            else:
                infos = fs.ls(root, detail=True)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url(rel_dir)}: no such directory at the origin") \
                from None
        except Exception as e:  # fsspec backends raise many types; all mean "origin failed"
            raise OriginError(f"{self.url(rel_dir)}: listing failed: {e}") from e
        items = []
        for info in infos[:MAX_ENTRIES]:
            rel = self._rel(fs, str(info.get("name", ""))).rstrip("/")
            if not rel or rel == key[0]:
                continue
            is_dir = info.get("type") == "directory"
            size = info.get("size")
            size = 0 if is_dir else (int(size) if isinstance(size, int) else -1)
            etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
            items.append(Item(rel, size, _mtime(info), etag, is_dir))
        with self._lock:
            self._cache.put(key, items, self._clock())
        return items

    def item(self, path: str) -> Item | None:
        """The entry named `path` in its parent's listing (a dict lookup, not a scan: FUSE asks
        this for every name it resolves); None when the parent does not list it."""
        rel = path.strip("/")
        parent = rel.rpartition("/")[0]
        items = self.list(parent)
        with self._lock:
            index = self._index.get(parent)
            if index is None or index[0] is not items:
                index = (items, {it.path: it for it in items})
                self._index[parent] = index
                if len(self._index) > 1024:
                    self._index.pop(next(iter(self._index)))
        return index[1].get(rel)

    def drop(self) -> None:
        """Forget every cached listing (the next list asks the origin)."""
        with self._lock:
            self._cache.clear()
            self._index.clear()
