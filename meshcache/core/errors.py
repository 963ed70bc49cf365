"""Errors and ERROR codes shared by the decoders of outside bytes (wire, Bloom, manifests).

Kept apart so that a decoder (bloom.py) can raise the protocol's error without importing the
message definitions in wire.py.
"""

from __future__ import annotations

__all__ = ["WireError", "ERR_BAD_REQUEST", "ERR_BLOCK_SIZE", "ERR_AUTH", "ERR_TOO_LARGE",
           "ERR_NOT_FOUND", "ERR_REFUSED"]


class WireError(ValueError):
    """Bytes that are not a valid message of this protocol (the only error decoding raises)."""


# ERROR codes (the `code` of a wire ERROR message).
ERR_BAD_REQUEST = 1  # the request could not be decoded or is not one this node answers
ERR_BLOCK_SIZE = 3  # HELLO: block size or cluster tag differ
ERR_AUTH = 4  # the message names another node than the authenticated one
ERR_TOO_LARGE = 5  # the reply would exceed the asker's frame limit
ERR_NOT_FOUND = 8  # no base for a delta, not a member, or the fetch for the asker failed
ERR_REFUSED = 9  # the URL is not one this node fetches for peers (peer_origins)
