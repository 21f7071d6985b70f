"""Edge addresses: ``"host:port"``, ``"[v6]:port"``, ``(host, port)``, or a list of those."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PORT = 4433  # the edge's default QUIC port


@dataclass(frozen=True)
class Address:
    """One edge's QUIC address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: str | Address | tuple[str, int]) -> Address:
    """Parse one address; raises `ValueError` naming what is wrong."""
    if isinstance(value, Address):
        return value
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], int):
            raise ValueError(f"address: expected (host, port), got {value!r}")
        host, port = value
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # [v6]:port or [v6]
            end = text.find("]")
            if end < 0:
                raise ValueError(f"address: unclosed '[' in {value!r}")
            host, rest = text[1:end], text[end + 1 :]
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise ValueError(f"address: unexpected {rest!r} after ']' in {value!r}")
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        else:  # bare host, or a bare IPv6 address
            host, port_text = text, ""
        if port_text and not port_text.isdigit():
            raise ValueError(f"address: port must be a number in {value!r}")
        port = int(port_text) if port_text else DEFAULT_PORT
    else:
        raise ValueError(f"address: expected 'host:port' or (host, port), got {type(value).__name__}")
    if not host:
        raise ValueError(f"address: empty host in {value!r}")
    if not 0 < port < 65536:
        raise ValueError(f"address: port must be in [1, 65535], got {port}")
    return Address(host, port)


def parse_addresses(
    value: str | Address | tuple[str, int] | Sequence[str | Address | tuple[str, int]],
) -> list[Address]:
    """Parse one address or a list of them, keeping the order (the order of preference)."""
    if isinstance(value, str | Address | tuple):
        return [parse_address(value)]
    items = [parse_address(v) for v in value]
    if not items:
        raise ValueError("address: give at least one edge address")
    return items
