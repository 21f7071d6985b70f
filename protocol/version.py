"""Protocol version and the QUIC ALPN identifier."""

from __future__ import annotations

from .errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1  # major version: peers with a different one cannot talk
ALPN_PROTOCOL = "isthmus/1"  # QUIC/TLS application protocol, tracks PROTOCOL_VERSION


def check_version(version: object) -> None:
    """Raise `ProtocolError(UNSUPPORTED_VERSION)` unless `version` is our major version."""
    if isinstance(version, bool) or not isinstance(version, int) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"version: unsupported protocol version {version!r}, this peer speaks {PROTOCOL_VERSION}",
        )
