"""Hostile QUIC clients for the floods and the over-the-wire fuzz.

Attackers connect from their own loopback source addresses (127.0.0.2 and up), as attackers on
other hosts would: the edge's per-source limits and wrong-key throttling then fall on them, and a
legitimate client on 127.0.0.1 is measured beside them. Raw on purpose (`RawClient`): they send
partial frames, junk and wrong keys, which the SDK rightly refuses to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

from aioquic.quic.connection import QuicConnection
from isthmus.protocol import Done, Error, ErrorCode

from tests.edge.quic_helpers import RawClient, client_config

HANDSHAKE_TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def attacker(port: int, source: str = "127.0.0.2") -> AsyncIterator[RawClient]:
    """A `RawClient` connected to 127.0.0.1:`port` from `source` (a loopback address)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    quic = QuicConnection(configuration=client_config())
    _, proto = await loop.create_datagram_endpoint(lambda: RawClient(quic), sock=sock)
    client = cast(RawClient, proto)
    try:
        client.connect(("127.0.0.1", port))
        await asyncio.wait_for(client.wait_connected(), HANDSHAKE_TIMEOUT_S)
        yield client
    finally:
        client.close()  # CONNECTION_CLOSE goes out now; waiting for the edge's answer is not needed
        if client._transport is not None:
            client._transport.close()


def source(i: int) -> str:
    """The i-th attacker address: 127.0.0.2 ... 127.0.0.251, then 127.0.1.2 ... (never 127.0.0.1)."""
    i %= 250 * 250
    return f"127.0.{i // 250}.{2 + i % 250}"


@dataclass
class AttackStats:
    """What the attackers saw: final messages by code, connections refused or closed."""

    codes: Counter[str] = field(default_factory=Counter)
    num_sent: int = 0
    num_connect_failures: int = 0
    num_no_answer: int = 0

    def note_end(self, messages: list[object], was_reset: bool) -> None:
        last = messages[-1] if messages else None
        if isinstance(last, Error):
            self.codes[ErrorCode(last.code).name] += 1
        elif isinstance(last, Done):
            self.codes["DONE"] += 1
        else:
            self.codes["RESET" if was_reset else "NO_MESSAGE"] += 1

    def summary(self) -> dict[str, object]:
        return {
            "sent": self.num_sent,
            "codes": dict(self.codes),
            "connect_failures": self.num_connect_failures,
            "no_answer": self.num_no_answer,
        }


async def sample_rss(rss: Callable[[], int], stop: asyncio.Event, into: list[int]) -> None:
    """Sample a process's RSS every 0.25 s until `stop` (for the peak during a flood)."""
    while not stop.is_set():
        into.append(rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
