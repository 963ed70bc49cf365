"""Cluster authentication: an HMAC challenge-response bound to the connection.

Both ends prove they hold the cluster credential without sending it: each sends a fresh nonce,
each answers with HMAC(K, role | channel binding | both nonces | both node ids), where K is
derived from the credential and the channel binding is the TLS exporter value of this very
connection (so a proof cannot be replayed on, or relayed to, another connection). Nothing else
is accepted on a connection until this succeeds.

A proof is an HMAC anyone can test guesses against offline, so the credential must not be
guessable: `check_credential` refuses one estimated below 128 bits, and K comes from scrypt (a
slow, memory-hard KDF) so each guess of a weak one costs ~0.1 s and 32 MiB anyway.
`new_secret()` makes a good credential (256 random bits, base64url).

The handshake objects are pure (bytes in, bytes out); `authenticate` is the thin shell that runs
them over the transport's first stream.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import os
import secrets
import string
from typing import Any

import cbor2

from meshcache.config import ConfigError
from meshcache.core.wire import WireError, decode_items
from meshcache.transport.base import Authenticator, Connection

AUTH_VERSION = 2
NONCE_SIZE = 32
MAX_AUTH_FRAME = 512
MIN_CREDENTIAL_BITS = 128
_KEY_LABEL = b"meshcache cluster key v2"
_TAG_LABEL = b"meshcache cluster tag v2"
# scrypt cost: N=2^15, r=8 -> 32 MiB and ~0.1 s per derivation (per guess, for an attacker).
_SCRYPT = dict(n=2**15, r=8, p=1, maxmem=64 * 1024 * 1024, dklen=32)


class AuthFailed(Exception):
    """The peer did not prove it holds the cluster credential (or spoke out of turn)."""


class WeakCredential(ConfigError):
    """The cluster credential is too short or too guessable to keep outsiders out."""


def new_secret() -> str:
    """A fresh cluster credential: 32 random bytes as 43 base64url characters (256 bits).
    (About 1 in 5,000 random strings trips the guessability screen; those are drawn again.)"""
    while True:
        s = secrets.token_urlsafe(32)
        try:
            check_credential(s.encode())
        except WeakCredential:
            continue
        return s


# The 100 commonest letter pairs of English text: runs of them mean words, not random letters.
_BIGRAMS = frozenset("""th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng
se ha as ou io le ve co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur ca el ta la ns di
fo ho pe ec pr no ct us ac ot il tr ly nc et ut ss so rs un lo wa ge ie wh ee wi em ad ol rt po
we na ul ni ts mo ow pa im mi ai sh ir su id os iv ia am fi ci vi pl ig tu ev ld ry mp fe bl ab
gh ty op wo sa ay ex ke fr oo av ag if ap gr od bo sp rd do uc bu ei ov by rm ep tt oc fa ef cu
rn sc gi da yo cr cl du ga qu ue ff ba ey ls va um pp ua up lu go ht ru ug ds lt pi rc rr eg au
ck ew mu br bi pt ak pu ui rg ib tl ny ki rk ys ob mm fu ph og ms ye ud mb ip ub oi rl gu dr hr
cc tw ft wn nu af hu nn eo vo rv nf xp gn sm fl iz ok nl my gl aw ju oa eq sy sl ps jo lf nv je
nk kn gs dy hy ze ks xt bj tc lk""".split()[:100])
_B64URL = string.ascii_letters + string.digits + "-_"
_B64 = string.ascii_letters + string.digits + "+/="
_REPEAT = 5  # a piece this long seen before adds no entropy (dragon2026dragon2026)
_Z = 4.0  # patterned characters beyond this many standard deviations of chance: made by a person


def _alphabet(text: str) -> str:
    """The smallest usual alphabet the characters of `text` come from."""
    if text.isdigit():
        return string.digits
    if all(c in string.hexdigits for c in text) and (text.islower() or text.isupper()):
        return string.hexdigits[:16] if text.islower() else string.digits + "ABCDEF"
    for chars in (_B64URL, _B64):
        if all(c in chars for c in text):
            return chars
    out = ""
    for chars in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
        if any(c in chars for c in text):
            out += chars
    if any(not c.isascii() or not c.isalnum() for c in text):
        out += string.punctuation + " "
    return out


def _pair_patterned(prev: str, c: str) -> bool:
    """A repeat or +-1 step of the character before (aaaa, 1234, abcd), or the second letter of
    a common English pair (words)."""
    return abs(ord(c) - ord(prev)) <= 1 or (prev + c).lower() in _BIGRAMS


@functools.lru_cache(maxsize=64)
def _chance(alphabet: str) -> float:
    """How often a pair of a random string over `alphabet` is patterned."""
    hits = sum(_pair_patterned(a, b) for a in alphabet for b in alphabet)
    return hits / len(alphabet) ** 2


def credential_strength(credential: bytes) -> tuple[float, int, float]:
    """(bits, patterned, limit): the most entropy the credential can hold (its characters that
    do not end a repeat of an earlier 5-character piece, times the bits of its alphabet), how many of its
    characters continue words, repeats or sequences, and the most a random string would have
    (chance plus 4 standard deviations)."""
    text = credential.decode("utf-8", "replace")
    if not text:
        return 0.0, 0, 0.0
    alphabet = _alphabet(text)
    r = _REPEAT
    fresh = sum(1 for i in range(len(text))
                if i < r - 1 or text[i - r + 1:i + 1] not in text[:i])
    patterned = sum(_pair_patterned(a, b) for a, b in zip(text, text[1:]))
    p, n = _chance(alphabet), len(text) - 1
    return fresh * math.log2(len(alphabet)), patterned, n * p + _Z * math.sqrt(n * p * (1 - p))


def check_credential(credential: bytes) -> None:
    """Raise WeakCredential unless the credential can hold >= 128 bits and looks random."""
    advice = ("Make one with `meshcache secret` (or use >= 32 random hex digits, or >= 22 "
              "random base64 characters)")
    if not credential:
        raise WeakCredential("cluster_secret: an empty cluster credential cannot authenticate "
                             f"anyone. {advice}")
    bits, patterned, limit = credential_strength(credential)
    if bits < MIN_CREDENTIAL_BITS:
        raise WeakCredential(
            f"cluster_secret: the cluster credential is too short (at most {bits:.0f} bits of "
            f"entropy, {MIN_CREDENTIAL_BITS} needed): an outsider who sees one connection "
            f"attempt could guess it offline. {advice}")
    if patterned > limit + 1:
        raise WeakCredential(
            f"cluster_secret: the cluster credential looks made by a person ({patterned} of its "
            f"{len(credential)} characters continue words, repeats or sequences): an outsider who sees one connection attempt "
            f"could guess it offline. {advice}")


@functools.lru_cache(maxsize=16)
def derive_key(credential: bytes) -> bytes:
    """The 32-byte MAC key of a cluster credential (the credential itself never leaves):
    scrypt with a fixed label, after refusing a weak credential."""
    check_credential(credential)
    return hashlib.scrypt(credential, salt=_KEY_LABEL, **_SCRYPT)  # type: ignore[arg-type]


def cluster_tag(credential: bytes) -> bytes:
    """8 bytes naming the cluster in HELLO and mDNS ads: a label's HMAC under the scrypt key,
    so the tag tests guesses no faster than the proofs do (and a weak credential is refused)."""
    return hmac.new(derive_key(credential), _TAG_LABEL, hashlib.sha256).digest()[:8]


def _proof(key: bytes, role: bytes, binding: bytes, nonce_c: bytes, nonce_s: bytes,
           id_c: bytes, id_s: bytes) -> bytes:
    msg = b"|".join([role, binding, nonce_c, nonce_s, id_c, id_s])
    return hmac.new(key, msg, hashlib.sha256).digest()


def _decode(frame: bytes, kind: str, n: int) -> list[Any]:
    """One handshake frame through wire's bounded decoder: [AUTH_VERSION, kind, bytes...]."""
    try:
        obj = decode_items(frame, max_size=MAX_AUTH_FRAME)
    except WireError as e:
        raise AuthFailed(f"{kind}: {e}") from None
    if not (len(obj) == n and obj[0] == AUTH_VERSION and obj[1] == kind):
        raise AuthFailed(f"expected {kind} (auth version {AUTH_VERSION})")
    for item in obj[2:]:
        if not isinstance(item, bytes) or len(item) > 64:
            raise AuthFailed(f"{kind}: malformed field")
    return obj


class ClientHandshake:
    """The connecting side: hello -> (challenge) -> proof -> (ok)."""

    def __init__(self, key: bytes, node_id: bytes, binding: bytes,
                 nonce: bytes | None = None) -> None:
        self.key, self.node_id, self.binding = key, node_id, binding
        self.nonce = nonce or os.urandom(NONCE_SIZE)
        self.peer_node_id: bytes | None = None
        self._state = "start"

    def hello(self) -> bytes:
        assert self._state == "start"
        self._state = "sent_hello"
        return cbor2.dumps([AUTH_VERSION, "hello", self.node_id, self.nonce])

    def on_challenge(self, frame: bytes) -> bytes:
        """Check the server's proof; returns our proof."""
        if self._state != "sent_hello":
            raise AuthFailed("challenge out of turn")
        _, _, server_id, nonce_s, server_proof = _decode(frame, "challenge", 5)
        if len(nonce_s) != NONCE_SIZE:
            raise AuthFailed("challenge: bad nonce")
        want = _proof(self.key, b"server", self.binding, self.nonce, nonce_s, self.node_id,
                      server_id)
        if not hmac.compare_digest(want, server_proof):
            raise AuthFailed("the server does not hold the cluster credential")
        self.peer_node_id = server_id
        self._state = "sent_proof"
        mine = _proof(self.key, b"client", self.binding, self.nonce, nonce_s, self.node_id,
                      server_id)
        return cbor2.dumps([AUTH_VERSION, "proof", mine])

    def on_ok(self, frame: bytes) -> None:
        if self._state != "sent_proof":
            raise AuthFailed("ok out of turn")
        _decode(frame, "ok", 2)
        self._state = "done"


class ServerHandshake:
    """The accepting side: (hello) -> challenge -> (proof) -> ok."""

    def __init__(self, key: bytes, node_id: bytes, binding: bytes,
                 nonce: bytes | None = None) -> None:
        self.key, self.node_id, self.binding = key, node_id, binding
        self.nonce = nonce or os.urandom(NONCE_SIZE)
        self.peer_node_id: bytes | None = None
        self._client_nonce = b""
        self._state = "start"

    def on_hello(self, frame: bytes) -> bytes:
        if self._state != "start":
            raise AuthFailed("hello out of turn")
        _, _, client_id, nonce_c = _decode(frame, "hello", 4)
        if len(nonce_c) != NONCE_SIZE:
            raise AuthFailed("hello: bad nonce")
        self.peer_node_id, self._client_nonce = client_id, nonce_c
        self._state = "sent_challenge"
        proof = _proof(self.key, b"server", self.binding, nonce_c, self.nonce, client_id,
                       self.node_id)
        return cbor2.dumps([AUTH_VERSION, "challenge", self.node_id, self.nonce, proof])

    def on_proof(self, frame: bytes) -> bytes:
        if self._state != "sent_challenge":
            raise AuthFailed("proof out of turn")
        _, _, client_proof = _decode(frame, "proof", 3)
        assert self.peer_node_id is not None
        want = _proof(self.key, b"client", self.binding, self._client_nonce, self.nonce,
                      self.peer_node_id, self.node_id)
        if not hmac.compare_digest(want, client_proof):
            raise AuthFailed("the client does not hold the cluster credential")
        self._state = "done"
        return cbor2.dumps([AUTH_VERSION, "ok"])


def make_authenticator(credential: bytes, node_id: bytes) -> Authenticator:
    """The transport's `authenticate(conn)` hook for this credential and node id."""
    key = derive_key(credential)

    async def authenticate(conn: Connection) -> None:
        binding = conn.channel_binding()
        try:
            if conn.is_client:
                hs = ClientHandshake(key, node_id, binding)
                stream = await conn.open_stream()
                await stream.send_frame(hs.hello())
                await stream.send_frame(hs.on_challenge(await stream.recv_frame(MAX_AUTH_FRAME)))
                hs.on_ok(await stream.recv_frame(MAX_AUTH_FRAME))
                peer = hs.peer_node_id
            else:
                server = ServerHandshake(key, node_id, binding)
                stream = await conn.accept_stream()
                await stream.send_frame(server.on_hello(await stream.recv_frame(MAX_AUTH_FRAME)))
                await stream.send_frame(server.on_proof(await stream.recv_frame(MAX_AUTH_FRAME)))
                peer = server.peer_node_id
            await stream.finish()
        except AuthFailed:
            raise
        except Exception as e:  # the peer broke the exchange: not authenticated
            raise AuthFailed(f"authentication exchange failed: {e}") from None
        conn.peer_node_id = peer

    return authenticate
