"""The S3 REST protocol's pure parts: error documents, Range and conditional headers, and the
ListObjectsV2 page (which keys, which common prefixes, the continuation token) and its XML."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from email.utils import formatdate
from typing import Iterable
from xml.sax.saxutils import escape

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000
MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length

# S3 error code -> HTTP status, as S3 sends them.
STATUS = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InternalError": 500,
    "KeyTooLongError": 400,
    "MethodNotAllowed": 405,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NotImplemented": 501,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
}


class S3Error(Exception):
    """An S3 error reply: code (e.g. NoSuchKey), message, HTTP status, extra XML fields."""

    def __init__(self, code: str, message: str, **extra: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = STATUS.get(code, 400)
        self.extra = extra


def error_xml(code: str, message: str, resource: str, request_id: str,
              extra: dict[str, str] | None = None) -> bytes:
    """The error document S3 sends with a failed request."""
    fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in (extra or {}).items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message>{fields}<Resource>{escape(resource)}</Resource>"
            f"<RequestId>{request_id}</RequestId></Error>").encode()


def location_xml(region: str) -> bytes:
    """GetBucketLocation's answer (us-east-1 is the empty constraint, as S3 says it)."""
    value = "" if region == "us-east-1" else escape(region)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<LocationConstraint xmlns="{XMLNS}">{value}</LocationConstraint>').encode()


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def iso_date(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def check_key(key: str) -> None:
    """Refuse keys that would name something outside the bucket's prefix at the origin."""
    if len(key.encode()) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "your key is too long")
    parts = key.split("/")
    if key.startswith("/") or any(p in (".", "..") for p in parts) or "\0" in key \
            or "\\" in key:
        raise S3Error("InvalidArgument",
                      "keys with '.' or '..' segments, a leading '/', '\\' or NUL are not served")


# ---- Range and conditions ------------------------------------------------------------------------

def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a `Range: bytes=...` header, None for the whole object (no header, a form
    S3 ignores, or several ranges); S3Error InvalidRange when it is unsatisfiable."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise S3Error("InvalidRange", "the requested range is not satisfiable",
                              ActualObjectSize=str(size), RangeRequested=header)
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None
    if start >= size:
        raise S3Error("InvalidRange", "the requested range is not satisfiable",
                      ActualObjectSize=str(size), RangeRequested=header)
    return start, min(end, size)


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def check_conditions(etag: str, if_match: str | None, if_none_match: str | None) -> int | None:
    """The status a conditional GET/HEAD gets (412 or 304), or None to serve the object."""
    bare = etag.strip('"')
    if if_match is not None:
        tags = _etags(if_match)
        if "*" not in tags and bare not in tags:
            return 412
    if if_none_match is not None:
        tags = _etags(if_none_match)
        if "*" in tags or bare in tags:
            return 304
    return None


# ---- ListObjectsV2 -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One object at the origin under a bucket's prefix."""

    key: str
    size: int
    mtime: float
    etag: str


@dataclass(frozen=True)
class ListPage:
    contents: list[Entry]
    prefixes: list[str]
    truncated: bool
    next_token: str | None
    key_count: int


def encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error("InvalidArgument", "the continuation token provided is incorrect") \
            from None


def list_page(entries: Iterable[Entry], prefix: str, delimiter: str, max_keys: int,
              after: str, dirs: Iterable[str] = ()) -> ListPage:
    """One page of ListObjectsV2 over `entries`: keys under `prefix` sorted, those past a
    `delimiter` folded into common prefixes, starting after `after`, at most `max_keys` rows.
    `dirs` are directory names ('a/b/') the origin listed without their contents."""
    max_keys = max(0, min(max_keys, MAX_KEYS))
    rows: dict[str, Entry | None] = {}
    for d in dirs:
        if d.startswith(prefix) and delimiter:
            rest = d[len(prefix):]
            rows[prefix + rest.split(delimiter, 1)[0] + delimiter] = None
    for e in entries:
        if not e.key.startswith(prefix):
            continue
        rest = e.key[len(prefix):]
        if delimiter and delimiter in rest:
            rows[prefix + rest.split(delimiter, 1)[0] + delimiter] = None
        else:
            rows[e.key] = e
    names = sorted(k for k in rows if k > after)
    page, more = names[:max_keys], len(names) > max_keys
    contents = [e for k in page if (e := rows[k]) is not None]
    prefixes = [k for k in page if rows[k] is None]
    return ListPage(contents, prefixes, more, encode_token(page[-1]) if more and page else None,
                    len(page))


def list_xml(bucket: str, prefix: str, delimiter: str, max_keys: int, page: ListPage,
             token: str | None, start_after: str | None, encoding: str | None) -> bytes:
    """The ListBucketResult document of ListObjectsV2."""
    from urllib.parse import quote

    def enc(s: str) -> str:
        return escape(quote(s, safe="/") if encoding == "url" else s)

    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{XMLNS}">',
           f"<Name>{escape(bucket)}</Name><Prefix>{enc(prefix)}</Prefix>",
           f"<KeyCount>{page.key_count}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"]
    if delimiter:
        out.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
    if encoding == "url":
        out.append("<EncodingType>url</EncodingType>")
    out.append(f"<IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>")
    if token:
        out.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
    if page.next_token:
        out.append(f"<NextContinuationToken>{page.next_token}</NextContinuationToken>")
    if start_after:
        out.append(f"<StartAfter>{enc(start_after)}</StartAfter>")
    for e in page.contents:
        out.append(f"<Contents><Key>{enc(e.key)}</Key>"
                   f"<LastModified>{iso_date(e.mtime)}</LastModified>"
                   f"<ETag>&quot;{escape(e.etag.strip(chr(34)))}&quot;</ETag>"
                   f"<Size>{e.size}</Size><StorageClass>STANDARD</StorageClass></Contents>")
    for p in page.prefixes:
        out.append(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>")
    out.append("</ListBucketResult>")
    return "".join(out).encode()


def clamp_max_keys(value: str | None) -> int:
    if value is None:
        return MAX_KEYS
    try:
        n = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", "max-keys must be an integer") from None
    if n < 0:
        raise S3Error("InvalidArgument", "max-keys must not be negative")
    return min(n, MAX_KEYS)

