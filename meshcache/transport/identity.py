"""A node's TLS identity: an EC P-256 key and a self-signed certificate kept in its state dir.

Peers do not verify certificates against a CA (the cluster credential is checked above the
transport, bound to the TLS session); the certificate only gives each node a stable key. The
node id is derived from the public key alone (SHA-256 of the SubjectPublicKeyInfo, first 16
bytes, hex), so it survives a certificate being re-made from the same key.

Files: `<state_dir>/node.key` (PKCS#8 PEM, mode 0600) and `<state_dir>/node.crt` (PEM). Each is
written to a temporary file and linked into place, so a crash leaves either no file or a whole
one, and two processes starting at once end up with the same identity.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEY_FILE = "node.key"
CERT_FILE = "node.crt"


def node_id_of_public_key(public_key: object) -> str:
    """The node id for a public key (cryptography key object)."""
    spki = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()[:16].hex()


def node_id_of_certificate(cert: x509.Certificate | bytes) -> str:
    """The node id for a certificate (object, PEM or DER bytes)."""
    if isinstance(cert, (bytes, bytearray)):
        data = bytes(cert)
        cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data))
    return node_id_of_public_key(cert.public_key())


def _write_new(path: str, data: bytes, mode: int) -> bool:
    """Create `path` with `data` atomically unless it exists; True if we created it."""
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race
        except FileExistsError:
            return False
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True
    finally:
        os.unlink(tmp)


def _make_certificate(key: ec.EllipticCurvePrivateKey, node_id: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshcache-{node_id}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("meshcache")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def create_identity() -> tuple[bytes, bytes, str]:
    """A throwaway (cert_pem, key_pem, node_id) kept in memory only (tests, simulations)."""
    key = ec.generate_private_key(ec.SECP256R1())
    node_id = node_id_of_public_key(key.public_key())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return _make_certificate(key, node_id), key_pem, node_id


def load_or_create_identity(state_dir: str | os.PathLike[str]) -> tuple[bytes, bytes, str]:
    """(cert_pem, key_pem, node_id): loaded from `state_dir`, made there on first start."""
    d = os.fspath(state_dir)
    os.makedirs(d, mode=0o700, exist_ok=True)
    key_path = os.path.join(d, KEY_FILE)
    cert_path = os.path.join(d, CERT_FILE)
    if not os.path.exists(key_path):
        new_key = ec.generate_private_key(ec.SECP256R1())
        _write_new(key_path, new_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
    with open(key_path, "rb") as f:
        key_pem = f.read()
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key")
    node_id = node_id_of_public_key(key.public_key())
    cert_pem = b""
    if os.path.exists(cert_path):
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        try:
            if node_id_of_certificate(cert_pem) != node_id:
                raise ValueError("certificate does not match the key")
        except ValueError:
            os.replace(cert_path, cert_path + ".bad")  # keep it for inspection, make a new one
            cert_pem = b""
    if not cert_pem:
        _write_new(cert_path, _make_certificate(key, node_id), 0o644)
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
    return cert_pem, key_pem, node_id
