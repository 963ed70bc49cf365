"""One node per cache directory per process, made on first use (the library's and fsspec's)."""

from __future__ import annotations

import atexit
import os
import threading

from meshcache.config import Config
from meshcache.read.node import Node

_shared: dict[str, Node] = {}
_lock = threading.Lock()


def shared_node(config: Config | None = None) -> Node:
    """The process's node for this config's cache directory, made on first use."""
    cfg = config if config is not None else Config.from_env()
    key = os.path.realpath(os.path.expanduser(cfg.cache_dir))
    with _lock:
        node = _shared.get(key)
        if node is None or node.closed:
            node = Node(cfg)
            _shared[key] = node
        return node


@atexit.register
def _flush_shared() -> None:
    """Write pending manifests of every shared node when the interpreter exits."""
    for node in list(_shared.values()):
        try:
            node.flush()
        except Exception:
            pass


def _reset_lock() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock)
