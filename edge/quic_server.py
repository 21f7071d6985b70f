"""The edge's QUIC listener: aioquic, TLS 1.3, ALPN ``isthmus/1``, one bidirectional stream per request.

`EdgeQuicServer` owns the UDP endpoint, the session-ticket store (returning clients resume with
0-RTT and may send their request as early data), draining, and the limits that hold before
authentication: which connections are admitted (a total and a per-source cap, idle eviction under
pressure: `admission.py`), how many bytes they may make the edge hold before their requests are
read (`receive_budget.py`), the throttling of wrong API keys per source address (the
`ApiKeyStore` given as `auth`) and of requests refused for breaking the limits (`strikes`), and
the `SourceGate` that refuses a throttled source's new connections at their first packet, before
any TLS work (`quic_gate.py`). Each connection is an `ServerConnection` (`quic_connection.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicErrorCode
from isthmus.protocol import ErrorCode
from isthmus.protocol.version import ALPN_PROTOCOL

from .admission import ConnectionTable
from .allowlist import Allowlist
from .auth_throttle import FailureThrottle
from .memory import trim_heap
from .quic_compat import server_port
from .quic_connection import MAX_REMEMBERED_STREAMS, ServerConnection
from .quic_gate import GatedQuicServer
from .quic_limits import QuicLimits, SessionTicketStore, set_stream_limits
from .receive_budget import ReceiveBudget
from .session import Handler, StreamSession
from .source_gate import REFUSED_REQUESTS, WRONG_KEYS, SourceGate

__all__ = [
    "MAX_REMEMBERED_STREAMS",
    "EdgeQuicServer",
    "QuicLimits",
    "ServerConnection",
    "SessionTicketStore",
    "set_stream_limits",
]

log = logging.getLogger(__name__)

CLOSE_FLUSH_TIMEOUT_S = 1.0  # seconds close() waits for unacknowledged frames before closing
TRIM_AFTER_PEAK = 4 * 1024 * 1024  # bytes: held received bytes that make a heap trim worth it
TRIM_BELOW = 1024 * 1024  # bytes: trim once the held bytes have fallen back under this
TRIM_MIN_INTERVAL_S = 1.0  # seconds between heap trims
# aioquic logs at INFO on its "quic" logger for every handshake, stream reset and close: under a
# flood of connections that is hundreds of lines a second written by the edge's one event loop
QUIC_LOGGER = "quic"


class KeyThrottle(Protocol):
    """The part of `ApiKeyStore` the listener uses: wrong keys throttled per source address."""

    def check_throttle(self, source: str, now: float | None = None) -> None: ...

    def record_failure(self, source: str, now: float | None = None, reason: str = "") -> None: ...

    def throttle_retry_after(self, source: str, now: float | None = None) -> float: ...


class EdgeQuicServer:
    """Accepts QUIC connections and serves each request stream with `handler`."""

    def __init__(
        self,
        handler: Handler,
        *,
        certfile: str,
        keyfile: str,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: QuicLimits | None = None,
        on_error: Callable[[ErrorCode], None] | None = None,
        auth: KeyThrottle | None = None,
        allowlist: Allowlist | None = None,
        prompt_check: Callable[[int], None] | None = None,
    ) -> None:
        self.handler = handler
        # raises ProtocolError for a prompt of that many UTF-8 bytes that is too long by its size:
        # asked from a request frame's first bytes, before the prompt itself is received
        self.prompt_check = prompt_check
        self.allowlist = allowlist  # source CIDRs served (None or empty: every address)
        self.auth = auth  # wrong keys throttled per source address (None: not throttled here)
        self.limits = limits or QuicLimits()
        self.host = host
        self.on_error = on_error  # called for errors the server writes itself
        self.is_draining = False
        self.tickets = SessionTicketStore(self.limits.max_session_tickets)
        self._requested_port = port
        self._certfile = certfile
        self._keyfile = keyfile
        self._server: QuicServer | None = None
        self._connections: set[ServerConnection] = set()  # admitted and still in their handshake
        self._pending: set[ServerConnection] = set()  # still in their handshake
        self.table = ConnectionTable(self.limits.admission())
        self.budget = ReceiveBudget(self.limits.receive)
        # requests refused for breaking the limits, per source, on unproven connections
        self.strikes = FailureThrottle(self.limits.strikes)
        self.gate = SourceGate(self.limits.gate)  # throttled sources, refused before the handshake
        self.num_heap_trims = 0
        self._last_trim = float("-inf")
        self._idle = asyncio.Event()
        self._idle.set()
        self.max_stream_buffered = 0  # bytes: highest unacknowledged count any stream reached

    async def start(self) -> None:
        quic_log = logging.getLogger(QUIC_LOGGER)
        if quic_log.level == logging.NOTSET:  # not configured by the operator: warnings only
            quic_log.setLevel(logging.WARNING)
        config = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN_PROTOCOL],
            idle_timeout=self.limits.idle_timeout_s,
            max_stream_data=self.limits.max_stream_data,
            max_data=self.limits.max_data,
        )
        config.load_cert_chain(self._certfile, self._keyfile)
        _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: GatedQuicServer(
                gate=self.gate,
                configuration=config,
                create_protocol=self._create_protocol,
                session_ticket_fetcher=self.tickets.pop,
                session_ticket_handler=self.tickets.add,
            ),
            local_addr=(self.host, self._requested_port),
        )
        self._server = protocol

    def _create_protocol(self, quic: QuicConnection, stream_handler: object = None) -> ServerConnection:
        return ServerConnection(quic, stream_handler, server=self)

    @property
    def port(self) -> int:
        port = None if self._server is None else server_port(self._server)
        if port is None:
            raise RuntimeError("server not started")
        return port

    @property
    def num_connections(self) -> int:
        return len(self._connections)

    @property
    def num_active_streams(self) -> int:
        return sum(c.num_streams for c in self._connections)

    def buffered_bytes(self) -> int:
        """Bytes handed to QUIC on all connections and not yet acknowledged."""
        return sum(c.connection_buffered() for c in self._connections)

    async def drain(self, grace_s: float) -> int:
        """Stop admitting; wait up to `grace_s` for in-flight requests, then cancel the rest.

        Returns how many requests were in flight when draining began.
        """
        self.is_draining = True
        num_in_flight = self.num_active_streams
        if num_in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            except TimeoutError:
                for conn in list(self._connections):
                    conn.cancel_all(ErrorCode.DRAINING, "edge is shutting down")
        return num_in_flight

    async def close(self) -> None:
        """Cancel what still runs, close every connection and the socket."""
        for conn in list(self._connections):
            conn.cancel_all(ErrorCode.DRAINING, "edge is shutting down")
        streams = [s for c in self._connections for s in c.streams]
        # let the final Error/Done frames reach the clients before the connections close
        deadline = asyncio.get_running_loop().time() + CLOSE_FLUSH_TIMEOUT_S
        while self.buffered_bytes() > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="shutting down")
        for stream in streams:
            await stream.wait()
        if self._server is not None:
            self._server.close()
            self._server = None
        await asyncio.sleep(0)

    # --- throttled sources -------------------------------------------------------------------------
    def block_source(self, source: str, wait_s: float, reason: str) -> None:
        """Refuse new connections from `source` at their first packet for `wait_s` seconds."""
        if wait_s > 0.0 and source:
            now = asyncio.get_running_loop().time()
            self.gate.block(source, now + wait_s, reason, now)

    def strike(self, source: str) -> float:
        """A request from `source` on an unproven connection was refused for breaking the limits.

        Returns how long the source is now throttled (0.0: it still has credit); when it is, its
        new connections are refused at the gate for that long."""
        self.strikes.record_failure(source, asyncio.get_running_loop().time())
        wait = self.strike_wait(source)
        self.block_source(source, wait, REFUSED_REQUESTS)
        return wait

    def strike_wait(self, source: str) -> float:
        """Seconds `source` is still throttled for refused requests (0.0: it is not)."""
        return self.strikes.retry_after(source, asyncio.get_running_loop().time())

    # --- bookkeeping from connections -----------------------------------------------------------
    def _register(self, conn: ServerConnection) -> bool:
        """A connection's first packet: room for one more handshake? (admission comes after it)"""
        if len(self._pending) >= self.limits.max_connections:
            return False
        self._pending.add(conn)
        self._connections.add(conn)
        return True

    def _admit(self, conn: ServerConnection) -> str | None:
        """The handshake completed: admit `conn` (evicting an idle one if need be), or say why not."""
        self._pending.discard(conn)
        if self.allowlist is not None and not self.allowlist.allows(conn.source):
            self._connections.discard(conn)
            self.budget.remove(conn)
            log.info("refused a connection from %s: address not in the allowlist", conn.source)
            return "address not allowed"
        now = asyncio.get_running_loop().time()
        # a source throttled for wrong keys gets no new connection (ones it holds that proved a
        # valid key stay: `ServerConnection.has_valid_key`)
        throttled_s = self.auth.throttle_retry_after(conn.source) if self.auth is not None else 0.0
        self.block_source(conn.source, throttled_s, WRONG_KEYS)
        struck_s = self.strike_wait(conn.source)
        if struck_s > 0.0 and not throttled_s:
            self._connections.discard(conn)
            self.budget.remove(conn)
            self.block_source(conn.source, struck_s, REFUSED_REQUESTS)
            return f"{REFUSED_REQUESTS}; retry in {struck_s:.1f} s"
        verdict = self.table.admit(
            conn, conn.source, now, num_streams=len(conn.streams), throttled_s=throttled_s
        )
        if not verdict.is_admitted:
            self._connections.discard(conn)
            self.budget.remove(conn)
            log.info("refused a connection from %s: %s", conn.source, verdict.reason)
            return verdict.reason
        conn.is_admitted = True
        if isinstance(verdict.evict, ServerConnection):
            log.info("evicted an idle connection from %s to admit one", verdict.evict.source)
            verdict.evict.evict()
        return None

    def _unregister(self, conn: ServerConnection) -> None:
        self._connections.discard(conn)
        self._pending.discard(conn)
        self.table.remove(conn)
        self.budget.remove(conn)
        self._check_idle()
        self._maybe_trim()

    def _stream_finished(self, conn: ServerConnection, stream: StreamSession) -> None:
        self.table.stream_closed(conn, asyncio.get_running_loop().time())
        self._check_idle()

    def _account_received(self, conn: ServerConnection) -> None:
        """After each datagram: keep `conn` and all connections within the receive budgets."""
        budget, lim = self.budget, self.limits.receive
        budget.update(conn, conn.received_held())
        over = budget.over_connection(conn)
        if over:
            budget.num_shed += 1
            conn.shed(over, f"over the connection's budget of {lim.max_per_connection} bytes")
            budget.update(conn, conn.received_held())
        for victim, amount in budget.victims():
            if isinstance(victim, ServerConnection):
                budget.num_shed += 1
                victim.shed(amount, f"over the edge's budget of {lim.max_total} bytes")
                budget.update(victim, victim.received_held())
        self._maybe_trim()

    def _maybe_trim(self) -> None:
        """After a flood of held bytes has drained, hand the freed heap back to the OS."""
        budget = self.budget
        if budget.peak_total < TRIM_AFTER_PEAK or budget.total > TRIM_BELOW:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_trim < TRIM_MIN_INTERVAL_S:
            return
        self._last_trim = loop.time()
        budget.reset_peak()
        # soon, not now: the buffers of the streams being failed are freed when this call returns
        loop.call_soon(self._trim)

    def _trim(self) -> None:
        trim_heap()
        self.num_heap_trims += 1

    def _check_idle(self) -> None:
        if self.num_active_streams == 0:
            self._idle.set()
