"""fsspec filesystem `meshcache`, chained in front of any other: `meshcache::s3://bucket/key`.

It pickles by its init arguments only (fsspec's own mechanism), so forked and spawned workers
(PyTorch DataLoader) rebuild their node from the config or the environment on first use: the
host's meshcached when one serves the cache directory, else an embedded node (a forked child
inherits the parent's, whose loop thread restarts there).
"""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.implementations.chained import ChainedFileSystem

from meshcache.config import Config
from meshcache.host.client import DaemonNode, host_node
from meshcache.read.node import Node
from meshcache.read.origin import ObjectNotFound, OriginError
from meshcache.read.reader import Reader


class MeshcacheFileSystem(ChainedFileSystem):
    """Read-only filesystem whose files are read through the meshcache node."""

    protocol = "meshcache"
    root_marker = ""

    def __init__(self, target_protocol: str | None = None,
                 target_options: dict[str, Any] | None = None, fo: str | None = None,
                 config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_protocol = target_protocol or "file"
        self.target_options = dict(target_options or {})
        self.config_dict = dict(config) if config else None
        self._config: Config | None = None
        self._target: fsspec.AbstractFileSystem | None = None

    @property
    def node(self) -> Node | DaemonNode:
        """The node this filesystem reads through: the host's daemon, else the process's
        embedded node for its config."""
        if self._config is None:
            self._config = Config.from_dict(self.config_dict) if self.config_dict \
                else Config.from_env()
        return host_node(self._config)

    @property
    def target(self) -> fsspec.AbstractFileSystem:
        if self._target is None:
            self._target = fsspec.filesystem(self.target_protocol, **self.target_options)
        return self._target

    def _url(self, path: str) -> str:
        path = str(path)
        if path.startswith("meshcache::"):
            path = path[len("meshcache::"):]
        if "://" in path:
            return path
        if self.target_protocol == "file":
            return "file://" + (path if path.startswith("/") else "/" + path)
        return f"{self.target_protocol}://{path}"

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = str(path)
        for prefix in ("meshcache::", "meshcache://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return path

    def _open(self, path: str, mode: str = "rb", block_size: Any = None,
              autocommit: bool = True, cache_options: Any = None, **kwargs: Any) -> Reader:
        if mode != "rb":
            raise ValueError(f"meshcache: mode {mode!r} is not supported (read-only, 'rb')")
        return self.node.open(self._url(path), "rb", **self.target_options)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        return self.node.cat(self._url(path), start, end, self.target_options)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            st = self.node.stat(self._url(path), self.target_options)
        except ObjectNotFound:
            raise FileNotFoundError(path) from None
        except OriginError:
            info = dict(self.target.info(path, **kwargs))
            return info
        return {"name": path, "size": st["size"], "type": "file", "version": st["version"],
                "cached_blocks": st["cached_blocks"], "blocks": st["blocks"]}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return self.target.ls(path, detail=detail, **kwargs)

    def refresh(self, path: str) -> None:
        """Drop the cached stat of `path` so the next open sees the origin's current version."""
        self.node.refresh(self._url(path), self.target_options)

    def __reduce__(self) -> Any:
        return (_rebuild, (self.target_protocol, self.target_options, self.config_dict))


def _rebuild(target_protocol: str, target_options: dict[str, Any],
             config: dict[str, Any] | None) -> MeshcacheFileSystem:
    return MeshcacheFileSystem(target_protocol=target_protocol, target_options=target_options,
                               config=config)
