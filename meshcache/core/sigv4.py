"""AWS Signature Version 4 verification for S3 requests (header and presigned-URL forms).

Pure: the caller passes the request's method, raw path, raw query, headers, the secret lookup and
the current time. The canonical request is rebuilt the way S3 clients build it (botocore, the AWS
CLI, the Go and Java SDKs): the path exactly as sent (S3 does not re-encode it), the query decoded
and re-encoded with RFC 3986 unreserved characters, signed headers with whitespace collapsed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from calendar import timegm
from dataclasses import dataclass
from time import strptime
from typing import Callable, Mapping, Sequence
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = 15 * 60  # seconds S3 allows between the request's date and the server's clock
MAX_EXPIRES = 7 * 24 * 3600  # a presigned URL lives at most a week
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_CREDENTIAL_RE = re.compile(r"^([^/]{1,128})/(\d{8})/([^/]{1,64})/([^/]{1,64})/aws4_request$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


class AuthError(Exception):
    """A request that S3 would refuse: `code` is S3's error code, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    """What signing covers: `headers` maps lower-case names to every value sent for that name."""

    method: str
    raw_path: str
    raw_query: str
    headers: Mapping[str, Sequence[str]]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decode a raw query string into (name, value) pairs ('+' stays a plus, as S3 reads it)."""
    out = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        out.append((unquote(name), unquote(value)))
    return out


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    encoded = sorted((_uri_encode(k), _uri_encode(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_request(req: Request, signed_headers: Sequence[str],
                      query: Sequence[tuple[str, str]], payload_hash: str) -> str:
    """The canonical request string of SigV4 (its SHA-256 goes into the string to sign)."""
    lines = []
    for name in signed_headers:
        values = req.headers.get(name)
        if values is None:
            raise AuthError("SignatureDoesNotMatch",
                            f"the signed header {name!r} is not in the request")
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "\n".join([req.method, req.raw_path or "/", canonical_query(query), "".join(lines),
                      ";".join(signed_headers), payload_hash])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(b"AWS4" + secret.encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(secret: str, amz_date: str, scope: str, canonical: str) -> str:
    """The hex signature of a canonical request under `scope` (date/region/service/aws4_request)."""
    date, region, service, _ = scope.split("/")
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(signing_key(secret, date, region, service), to_sign.encode(),
                    hashlib.sha256).hexdigest()


def _amz_time(amz_date: str) -> float:
    try:
        return float(timegm(strptime(amz_date, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise AuthError("AccessDenied", f"X-Amz-Date {amz_date[:40]!r} is not a date such as "
                        "20261201T120000Z") from None


def _credential(value: str) -> tuple[str, str, str]:
    """(access key, scope, region) of a Credential field; AuthorizationHeaderMalformed if bad."""
    m = _CREDENTIAL_RE.match(value)
    if m is None:
        raise AuthError("AuthorizationHeaderMalformed",
                        "the Credential must be ACCESS_KEY/YYYYMMDD/region/s3/aws4_request")
    key, date, region, service = m.groups()
    if service != "s3":
        raise AuthError("AuthorizationHeaderMalformed",
                        f"the Credential names service {service!r}; this endpoint is s3")
    return key, f"{date}/{region}/{service}/aws4_request", region


def is_signed(req: Request) -> bool:
    """Whether the request carries SigV4 auth (header or presigned); else it is anonymous."""
    return req.header("authorization") is not None or any(
        k in ("X-Amz-Signature", "AWSAccessKeyId") for k, _ in parse_query(req.raw_query))


def verify(req: Request, secret_of: Callable[[str], str | None], now: float) -> str:
    """Check the request's SigV4 signature; return its access key or raise AuthError."""
    auth = req.header("authorization")
    query = parse_query(req.raw_query)
    if auth is not None:
        return _verify_header(req, auth, query, secret_of, now)
    if any(k == "X-Amz-Signature" for k, _ in query):
        return _verify_presigned(req, query, secret_of, now)
    if any(k == "AWSAccessKeyId" for k, _ in query):
        raise AuthError("InvalidRequest", "Signature Version 2 is not supported; presign with "
                        "Signature Version 4 (botocore: signature_version='s3v4')")
    raise AuthError("AccessDenied", "anonymous requests are not allowed; sign with SigV4")


def _secret(secret_of: Callable[[str], str | None], key: str) -> str:
    secret = secret_of(key)
    if secret is None:
        raise AuthError("InvalidAccessKeyId",
                        "the AWS access key id you provided does not exist in our records")
    return secret


def _check(expected: str, given: str) -> None:
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise AuthError("SignatureDoesNotMatch",
                        "the request signature we calculated does not match the signature you "
                        "provided; check your key and signing method")


def _verify_header(req: Request, auth: str, query: list[tuple[str, str]],
                   secret_of: Callable[[str], str | None], now: float) -> str:
    algorithm, _, rest = auth.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise AuthError("AuthorizationHeaderMalformed" if algorithm.startswith("AWS4")
                        else "InvalidRequest",
                        f"only {ALGORITHM} is supported (got {algorithm[:40]!r})")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= set(fields):
        raise AuthError("AuthorizationHeaderMalformed",
                        "the Authorization header needs Credential, SignedHeaders and Signature")
    key, scope, _ = _credential(fields["Credential"])
    amz_date = req.header("x-amz-date")
    if amz_date is None:
        raise AuthError("AccessDenied", "a signed request needs an X-Amz-Date header")
    when = _amz_time(amz_date)
    if abs(now - when) > MAX_SKEW:
        raise AuthError("RequestTimeTooSkewed", "the difference between the request time and "
                        "the server's time is too large")
    if amz_date[:8] != scope[:8]:
        raise AuthError("SignatureDoesNotMatch", "X-Amz-Date and the Credential's date differ")
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        raise AuthError("AuthorizationHeaderMalformed", "the host header must be signed")
    payload = req.header("x-amz-content-sha256")
    if payload is None:
        raise AuthError("InvalidRequest", "a signed request needs x-amz-content-sha256")
    if payload != UNSIGNED_PAYLOAD and not payload.startswith("STREAMING-") \
            and not _HEX64_RE.match(payload):
        raise AuthError("InvalidArgument", "x-amz-content-sha256 must be a SHA-256 hex digest")
    secret = _secret(secret_of, key)
    _check(signature(secret, amz_date, scope, canonical_request(req, signed, query, payload)),
           fields["Signature"])
    return key


def _verify_presigned(req: Request, query: list[tuple[str, str]],
                      secret_of: Callable[[str], str | None], now: float) -> str:
    q: dict[str, str] = {}
    for k, v in query:
        if k in q and k.startswith("X-Amz-"):
            raise AuthError("AuthorizationQueryParametersError", f"{k} is given twice")
        q[k] = v
    needed = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-SignedHeaders", "X-Amz-Signature")
    missing = [k for k in needed if k not in q]
    if missing:
        raise AuthError("AuthorizationQueryParametersError",
                        f"a presigned URL needs {', '.join(missing)}")
    if q["X-Amz-Algorithm"] != ALGORITHM:
        raise AuthError("AuthorizationQueryParametersError", f"only {ALGORITHM} is supported")
    key, scope, _ = _credential(q["X-Amz-Credential"])
    when = _amz_time(q["X-Amz-Date"])
    try:
        expires = int(q["X-Amz-Expires"])
    except ValueError:
        raise AuthError("AuthorizationQueryParametersError",
                        "X-Amz-Expires must be a number of seconds") from None
    if not 0 < expires <= MAX_EXPIRES:
        raise AuthError("AuthorizationQueryParametersError",
                        f"X-Amz-Expires must be between 1 and {MAX_EXPIRES}")
    if now > when + expires:
        raise AuthError("AccessDenied", "request has expired")
    if when - now > MAX_SKEW:
        raise AuthError("AccessDenied", "request is not valid yet")
    signed = q["X-Amz-SignedHeaders"].split(";")
    if "host" not in signed:
        raise AuthError("AuthorizationQueryParametersError", "the host header must be signed")
    rest = [(k, v) for k, v in query if k != "X-Amz-Signature"]
    payload = q.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    secret = _secret(secret_of, key)
    _check(signature(secret, q["X-Amz-Date"], scope, canonical_request(req, signed, rest, payload)),
           q["X-Amz-Signature"])
    return key
