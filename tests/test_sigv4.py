"""SigV4 verification against botocore's own signer: whatever botocore signs verifies; a wrong
secret, a changed path, query or signed header, a stale date or an expired URL do not."""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcache.core.sigv4 import AuthError, Request, verify

KEYS = {"AKIDTEST": "secret/with+chars="}


def signed(method="GET", path="/bucket/key", query="", headers=None, presign=False,
           secret="secret/with+chars=", expires=60):
    url = "http://127.0.0.1:9000" + path + (("?" + query) if query else "")
    req = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    creds = Credentials("AKIDTEST", secret)
    if presign:
        S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=expires).add_auth(req)
    else:
        req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    prepared = req.prepare()
    parts = urlsplit(prepared.url)
    hdrs: dict[str, list[str]] = {"host": ["127.0.0.1:9000"]}
    for k, v in prepared.headers.items():
        hdrs.setdefault(k.lower(), []).append(v if isinstance(v, str) else v.decode())
    return Request(method, parts.path, parts.query, hdrs)


def test_header_and_presigned_verify():
    now = time.time()
    assert verify(signed(headers={"Range": "bytes=0-9"}), KEYS.get, now) == "AKIDTEST"
    assert verify(signed(presign=True), KEYS.get, now) == "AKIDTEST"
    assert verify(signed(query="list-type=2&prefix=a%2Fb&max-keys=5"), KEYS.get, now)


def test_wrong_secret_changed_request_and_time():
    now = time.time()
    with pytest.raises(AuthError) as e:
        verify(signed(secret="nope"), KEYS.get, now)
    assert e.value.code == "SignatureDoesNotMatch"
    r = signed()
    with pytest.raises(AuthError) as e:
        verify(Request(r.method, "/bucket/other", r.raw_query, r.headers), KEYS.get, now)
    assert e.value.code == "SignatureDoesNotMatch"
    r = signed(headers={"Range": "bytes=0-9"})
    tampered = dict(r.headers, range=["bytes=0-99999"])
    with pytest.raises(AuthError):
        verify(Request(r.method, r.raw_path, r.raw_query, tampered), KEYS.get, now)
    with pytest.raises(AuthError) as e:
        verify(signed(), KEYS.get, now + 3600)
    assert e.value.code == "RequestTimeTooSkewed"
    with pytest.raises(AuthError) as e:
        verify(signed(presign=True, expires=5), KEYS.get, now + 10)
    assert e.value.code == "AccessDenied" and "expired" in e.value.message
    with pytest.raises(AuthError) as e:
        verify(signed(), {"OTHER": "x"}.get, now)
    assert e.value.code == "InvalidAccessKeyId"
    with pytest.raises(AuthError) as e:
        verify(Request("GET", "/b/k", "", {"host": ["h"]}), KEYS.get, now)
    assert e.value.code == "AccessDenied"


@settings(max_examples=60, deadline=None)
@given(key=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                   min_size=1, max_size=40),
       prefix=st.text(min_size=0, max_size=20), presign=st.booleans())
def test_any_key_and_query_botocore_signs_verifies(key, prefix, presign):
    path = "/bucket/" + quote(key, safe="/~")
    query = "list-type=2&prefix=" + quote(prefix, safe="")
    assert verify(signed(path=path, query=query, presign=presign), KEYS.get, time.time())


@settings(max_examples=200, deadline=None)
@given(auth=st.text(max_size=300), query=st.text(max_size=300))
def test_garbage_is_an_auth_error_never_a_crash(auth, query):
    req = Request("GET", "/b/k", query, {"host": ["h"], "authorization": [auth],
                                          "x-amz-date": ["20261201T000000Z"]})
    with pytest.raises(AuthError):
        verify(req, KEYS.get, time.time())
