"""Notice a dead edge while requests wait on it.

A killed edge process (or a machine that lost power) sends no CONNECTION_CLOSE, and a client whose
requests are waiting sends nothing that would fail, so without a probe a request would only learn
of it at QUIC's idle timeout (60 s by default). While requests are in flight and the edge has been
silent for `probe_after` seconds, the watchdog sends a QUIC PING; the peer's QUIC stack
acknowledges it whatever its application is doing, so a PING unanswered for `timeout` seconds
(aioquic retransmits it on its own probe timer meanwhile) means the edge is gone: the connection
is declared lost, its requests see `ConnectionLost` and the client fails over.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Watched(Protocol):
    """What the watchdog needs from a connection (`EdgeConnection` has it)."""

    close_reason: str | None

    def num_open_requests(self) -> int: ...

    def seconds_silent(self) -> float: ...

    def send_probe(self) -> asyncio.Future[None]: ...

    def forget_probe(self, probe: asyncio.Future[None]) -> None: ...

    def declare_lost(self, reason: str) -> None: ...


async def watch(conn: Watched, probe_after: float, timeout: float) -> None:
    """Run until the connection closes or is declared lost (bounded per probe by `timeout`)."""
    if probe_after <= 0 or timeout <= 0:
        raise ValueError(f"probe_after and timeout must be > 0, got {probe_after} and {timeout}")
    while conn.close_reason is None:
        silent = conn.seconds_silent()
        if conn.num_open_requests() == 0 or silent < probe_after:
            await asyncio.sleep(max(0.05, probe_after - silent) if conn.num_open_requests() else probe_after)
            continue
        probe = conn.send_probe()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(probe)
        except TimeoutError:
            conn.forget_probe(probe)
            if conn.close_reason is None and conn.seconds_silent() >= timeout:
                conn.declare_lost(f"edge did not answer a ping within {timeout:g} s")
                return
        except ConnectionError:  # the connection closed meanwhile: nothing left to watch
            return
