"""meshcache: the fleet's own disks as one read-through block cache.

The read path, top down:
    meshcache.open(url)        -> reader.Reader   file object; hot blocks read in the caller's thread
    Reader                     -> node.Node       block(version, i): store, (peers), origin
    Node                       -> store.BlockStore   verified blocks on disk, S3-FIFO eviction
                               -> origin.Origin      fsspec ranged reads pinned to one version
The module functions below use the host's meshcached when one serves the cache directory (its
Unix socket; MESHCACHE_DAEMON=off|<path>), else a node embedded in this process, both built from
`Config.from_env()`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from meshcache.config import Config, ConfigError
from meshcache.host.client import DaemonNode, DaemonUnavailable, host_node
from meshcache.read.node import Node
from meshcache.read.origin import ObjectChanged, ObjectNotFound, OriginError
from meshcache.read.reader import Reader
from meshcache.read.store import BlockCorrupt, StoreError
from meshcache.core.version import ObjectVersion

__all__ = ["open", "cat", "prewarm", "stat", "refresh", "stats", "default_node", "Node", "Config",
           "ConfigError", "Reader", "ObjectVersion", "OriginError", "ObjectNotFound",
           "ObjectChanged", "StoreError", "BlockCorrupt", "DaemonNode", "DaemonUnavailable"]
__version__ = "0.1.0"


def default_node() -> Node | DaemonNode:
    """The process's node for `Config.from_env()` (MESHCACHE_CONFIG, MESHCACHE_CACHE_DIR, ...):
    the host's daemon serving that cache directory, else an embedded node."""
    return host_node(Config.from_env())


def open(url: str, mode: str = "rb", *, node: Node | DaemonNode | None = None,
         **storage_options: Any) -> Any:
    """A read-only file object over any fsspec URL, served from the cache."""
    return (node or default_node()).open(url, mode, **storage_options)


def cat(url: str, start: int | None = None, end: int | None = None, *,
        node: Node | DaemonNode | None = None, **storage_options: Any) -> bytes:
    """Bytes [start, end) of the object at `url` (the whole object by default)."""
    return (node or default_node()).cat(url, start, end, storage_options)


def prewarm(urls: str | Iterable[str], progress: Callable[[int], Any] | bool | None = None, *,
            node: Node | DaemonNode | None = None, **storage_options: Any) -> dict[str, int]:
    """Bring every block of each URL into the cache; returns {url: size} when they are stored.
    `progress` is a callable given each block's byte count, or True for a bar on stderr."""
    n = node or default_node()
    if progress is True:
        from tqdm import tqdm

        with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="prewarm") as bar:
            def total(t: int) -> None:
                bar.total = t
                bar.refresh()
            return n.prewarm(urls, bar.update, storage_options, on_total=total)
    return n.prewarm(urls, progress or None, storage_options)


def stat(url: str, *, node: Node | DaemonNode | None = None, **storage_options: Any) -> dict[str, Any]:
    """Size, version and cached blocks of `url`."""
    return (node or default_node()).stat(url, storage_options)


def refresh(url: str, *, node: Node | DaemonNode | None = None, **storage_options: Any) -> ObjectVersion:
    """Forget the cached stat of `url` and ask the origin for its current version."""
    return (node or default_node()).refresh(url, storage_options)


def stats(*, node: Node | DaemonNode | None = None) -> dict[str, int]:
    """Counters of the default node: bytes from local/peers/origin, origin requests, ..."""
    return (node or default_node()).stats()
