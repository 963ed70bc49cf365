"""Origins through fsspec: stat an object version, and read byte ranges pinned to that version.

Async filesystems (http, s3, ...) run on the node's loop; sync ones (file, ...) in threads. Ranged
reads are pinned to the version where the protocol allows it (HTTP If-Match, S3 IfMatch or
VersionId, local fstat before and after), so an object that changes mid-read is an error
(`ObjectChanged`), never a mix of two versions' bytes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import fsspec
from fsspec.asyn import AsyncFileSystem

from meshcache.core.version import ObjectVersion, token_from_info


class OriginError(IOError):
    """The origin failed or refused; the message names the URL."""


class ObjectNotFound(OriginError, FileNotFoundError):
    """The origin has no object at this URL."""


class ObjectChanged(OriginError):
    """The object changed at the origin while it was being read."""


class RangesIgnored(OriginError):
    """The origin answered a ranged GET with the whole object (200) and no one took the body."""


# Given the chunks of a whole-object body (a range-less origin's 200), returns the bytes of
# the range that was asked for (read/streamfill.py stores every block as it goes by).
WholeBody = Callable[[AsyncIterator[bytes]], Awaitable[bytes]]

CHUNK = 1 << 20  # bytes read from a streaming body at a time


def split_protocol(url: str) -> tuple[str, str]:
    """('s3', 'bucket/key') for 's3://bucket/key'; local paths are 'file'."""
    if "::" in url:
        raise OriginError(f"{url}: chained URLs are for fsspec.open('meshcache::...'), "
                          "not meshcache.open")
    protocol, sep, _ = url.partition("://")
    if not sep:
        return "file", os.path.abspath(url)
    return protocol, url


def normalize_url(url: str) -> str:
    """The cache's name for a URL: local paths become absolute file:// URLs."""
    protocol, rest = split_protocol(url)
    if protocol == "file":
        path = rest if "://" not in rest else rest.split("://", 1)[1]
        return "file://" + os.path.abspath(path)
    return url


def _freeze(options: Mapping[str, Any]) -> str:
    return repr(sorted(options.items(), key=lambda kv: kv[0]))


class Origin:
    """Reads objects from their origins; one fsspec instance per protocol and option set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float,
                 default_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.loop = loop
        self.timeout = timeout
        self.default_options = {k: dict(v) for k, v in (default_options or {}).items()}
        self._fs: dict[tuple[str, str], fsspec.AbstractFileSystem] = {}

    def _filesystem(self, protocol: str, options: Mapping[str, Any]) -> fsspec.AbstractFileSystem:
        opts = {**self.default_options.get(protocol, {}), **options}
        key = (protocol, _freeze(opts))
        fs = self._fs.get(key)
        if fs is None:
            try:
                cls = fsspec.get_filesystem_class(protocol)
            except (ImportError, ValueError) as e:
                raise OriginError(f"{protocol}://: no filesystem for this protocol ({e})") from None
            if issubclass(cls, AsyncFileSystem) and cls.async_impl:
                fs = cls(asynchronous=True, loop=self.loop, skip_instance_cache=True, **opts)
            else:
                fs = cls(skip_instance_cache=True, **opts)
            self._fs[key] = fs
        return fs

    def _path(self, fs: fsspec.AbstractFileSystem, url: str) -> str:
        protocol, _ = split_protocol(url)
        if protocol in ("http", "https"):
            return url
        return fs._strip_protocol(url)

    async def stat(self, url: str, options: Mapping[str, Any]) -> ObjectVersion:
        """Ask the origin for the object's size and version token."""
        protocol, _ = split_protocol(url)
        fs = self._filesystem(protocol, options)
        path = self._path(fs, url)
        try:
            if isinstance(fs, AsyncFileSystem) and fs.async_impl:
                info = await asyncio.wait_for(fs._info(path), self.timeout)
            else:
                info = await asyncio.wait_for(asyncio.to_thread(fs.info, path), self.timeout)
        except FileNotFoundError as e:
            cause = e.__cause__
            if cause is not None and not isinstance(cause, FileNotFoundError) \
                    and getattr(cause, "status", None) != 404:
                # fsspec's http reports a refused connection as "not found"; it is not.
                raise OriginError(f"{url}: stat failed: {_describe(cause)}") from None
            raise ObjectNotFound(f"{url}: no such object at the origin") from None
        except asyncio.TimeoutError:
            raise OriginError(f"{url}: the origin did not answer a stat in {self.timeout:g} s") \
                from None
        except Exception as e:  # fsspec backends raise many types; all mean "origin failed"
            raise OriginError(f"{url}: stat failed: {_describe(e)}") from e
        if info.get("type") == "directory":
            raise OriginError(f"{url}: is a directory, not an object")
        size = info.get("size")
        if not isinstance(size, int) or size < 0:
            raise OriginError(f"{url}: the origin did not report a size")
        return ObjectVersion(url, token_from_info(info), size)

    async def read(self, version: ObjectVersion, start: int, end: int,
                   options: Mapping[str, Any], whole: WholeBody | None = None,
                   on_status: Callable[[int], None] | None = None) -> bytes:
        """Bytes [start, end) of exactly this version; ObjectChanged if the origin moved on.
        An HTTP origin that ignores Range answers with the whole object: its body is handed to
        `whole` as it streams (which returns the range), else RangesIgnored."""
        url = version.url
        protocol, _ = split_protocol(url)
        fs = self._filesystem(protocol, options)
        path = self._path(fs, url)
        try:
            if protocol == "file":
                data = await asyncio.to_thread(_read_local, path, version, start, end)
            elif protocol in ("http", "https"):
                data = await self._read_http(fs, path, version, start, end, whole, on_status)
            elif protocol in ("s3", "s3a") and hasattr(fs, "_call_s3"):
                data = await asyncio.wait_for(self._read_s3(fs, path, version, start, end),
                                              self.timeout)
            elif isinstance(fs, AsyncFileSystem) and fs.async_impl:
                data = await asyncio.wait_for(fs._cat_file(path, start=start, end=end),
                                              self.timeout)
            else:
                data = await asyncio.wait_for(
                    asyncio.to_thread(fs.cat_file, path, start=start, end=end), self.timeout)
        except (ObjectChanged, RangesIgnored):
            raise
        except FileNotFoundError:
            raise ObjectNotFound(f"{url}: the object is gone from the origin") from None
        except asyncio.TimeoutError:
            raise OriginError(f"{url}: bytes {start}-{end} took over {self.timeout:g} s") from None
        except Exception as e:
            if _is_precondition_failed(e):
                raise ObjectChanged(f"{url}: the object changed at the origin during the read "
                                    "(version no longer matches)") from None
            raise OriginError(f"{url}: reading bytes {start}-{end} failed: {_describe(e)}") from e
        if len(data) != end - start:
            raise ObjectChanged(f"{url}: the origin returned {len(data)} bytes for a range of "
                                f"{end - start}; the object changed or ignores ranges")
        return data

    async def _read_http(self, fs: Any, url: str, version: ObjectVersion, start: int, end: int,
                         whole: WholeBody | None,
                         on_status: Callable[[int], None] | None = None) -> bytes:
        """A ranged GET that sees the status: 206 -> the range; 200 -> the whole object, which
        is the range only when the range is the whole object, else goes to `whole`."""
        kw = dict(fs.kwargs)
        headers = dict(kw.pop("headers", None) or {})
        headers["Range"] = f"bytes={start}-{end - 1}"
        if version.etag:
            headers["If-Match"] = version.etag
        session = await fs.set_session()
        resp = await asyncio.wait_for(session.get(fs.encode_url(url), headers=headers, **kw),
                                      self.timeout)
        async with resp:
            if resp.status == 404:
                raise FileNotFoundError(url)
            if resp.status == 412:
                raise ObjectChanged(f"{url}: the object changed at the origin during the read "
                                    "(version no longer matches)")
            resp.raise_for_status()
            if on_status is not None:  # before the body: others may start their reads now
                on_status(resp.status)
            if resp.status == 206:
                first = resp.headers.get("Content-Range", "").removeprefix("bytes ")
                if first.split("-", 1)[0].strip() not in ("", str(start)):
                    raise ObjectChanged(f"{url}: asked for bytes from {start}, the origin sent "
                                        f"{first[:60]!r}")
                return await self._body(resp, end - start)
            if start == 0 and end == version.size:
                return await self._body(resp, end - start)
            if whole is None:
                raise RangesIgnored(f"{url}: the origin ignores Range (200 with the whole "
                                    "object for a ranged GET)")
            return await whole(self._chunks(resp))

    async def _body(self, resp: Any, n: int) -> bytes:
        """Exactly n bytes of a response body; more or fewer means another version."""
        try:
            data = await asyncio.wait_for(resp.content.readexactly(n), self.timeout) \
                if n else b""
            extra = await asyncio.wait_for(resp.content.read(1), self.timeout)
        except asyncio.IncompleteReadError as e:
            data, extra = e.partial, b""
        if extra or len(data) != n:
            raise ObjectChanged(f"{resp.url}: the origin sent a body of another length than "
                                f"the {n} bytes asked for; the object changed")
        return data

    async def _chunks(self, resp: Any) -> AsyncIterator[bytes]:
        """A streaming body in chunks of at most CHUNK bytes; a stall over the timeout fails."""
        while True:
            chunk = await asyncio.wait_for(resp.content.read(CHUNK), self.timeout)
            if not chunk:
                return
            yield chunk

    async def _read_s3(self, fs: Any, path: str, version: ObjectVersion, start: int,
                       end: int) -> bytes:
        bucket, key, _ = fs.split_path(path)
        kw: dict[str, Any] = {"Range": f"bytes={start}-{end - 1}"}
        if version.version_id:
            kw["VersionId"] = version.version_id
        elif version.etag:
            kw["IfMatch"] = version.etag
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **kw)
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    async def close(self) -> None:
        for fs in self._fs.values():
            session = getattr(fs, "_session", None)
            if session is not None and hasattr(session, "close"):
                try:
                    await session.close()
                except Exception:
                    pass
            s3 = getattr(fs, "_s3", None)
            if s3 is not None and hasattr(s3, "close"):
                try:
                    await s3.close()
                except Exception:
                    pass
        self._fs.clear()


def _read_local(path: str, version: ObjectVersion, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = os.pread(f.fileno(), end - start, start)
        after = os.fstat(f.fileno())
    now_token = token_from_info({"mtime": after.st_mtime, "ino": after.st_ino,
                                 "size": after.st_size})
    if (before.st_size != version.size or after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns or now_token != version.token):
        raise ObjectChanged(f"file://{path}: the file changed during the read")
    return data


def _is_precondition_failed(e: BaseException | None, depth: int = 0) -> bool:
    """True when the origin answered 412: the object no longer has the version we pinned."""
    if e is None or depth > 4:
        return False
    if _is_412(e):
        return True
    return _is_precondition_failed(e.__cause__ or e.__context__, depth + 1)


def _is_412(e: BaseException) -> bool:
    text = str(e).lower()
    if "pre-condition" in text or "precondition" in text:
        return True
    status = getattr(e, "status", None) or getattr(e, "code", None)
    if status == 412:
        return True
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        if err.get("Code") in ("PreconditionFailed", "412"):
            return True
        if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
            return True
    return False


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."
