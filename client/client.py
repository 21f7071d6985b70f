"""The async client: `connect()` to one of several edges, then `generate()` / `complete()`.

Failover and retries: a request whose connection dies before its first token moves to the next
edge at once; an `Error` with `retryable` set is retried after exponential backoff with jitter;
both count against `retries`. Once a token has been yielded nothing is retried: the error is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import msgspec
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket
from isthmus.protocol import ALPN_PROTOCOL, Done, Error, GenerateRequest, TokenChunk

from .address import Address, parse_addresses
from .backoff import Backoff
from .connection import ClientStream, ConnectionInfo, EdgeConnection, close_connection, open_connection
from .errors import (
    ConnectionLost,
    DeadlineExceeded,
    Draining,
    IsthmusError,
    Unavailable,
    from_error_message,
)
from .request import BuiltRequest, Prompt, build_request
from .results import Chunk, Completion
from .stream import ResponseStream
from .tickets import MemoryTicketStore, TicketStore

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds per handshake
DEFAULT_RETRIES = 2  # extra attempts per request
DEFAULT_LIVENESS_TIMEOUT = 6.0  # seconds: a silent edge unanswered this long (after a probe) is dead


class Client:
    """A connection to one of several edges. Build it with `connect()`."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        api_key: str | None = None,
        ca: str | None = None,
        verify: bool = True,
        server_name: str | None = None,
        timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        ticket_store: TicketStore | None = None,
        early_data: bool = True,
        backoff: Backoff | None = None,
        liveness_timeout: float | None = DEFAULT_LIVENESS_TIMEOUT,
    ) -> None:
        if not addresses:
            raise ValueError("addresses: give at least one edge address")
        if retries < 0:
            raise ValueError(f"retries: must be >= 0, got {retries}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout: must be > 0, got {connect_timeout}")
        if liveness_timeout is not None and liveness_timeout <= 0:
            raise ValueError(f"liveness_timeout: must be > 0 or None, got {liveness_timeout}")
        self.liveness_timeout = liveness_timeout
        self.addresses = list(addresses)
        self.api_key = api_key
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.tickets: TicketStore = ticket_store if ticket_store is not None else MemoryTicketStore()
        self.early_data = early_data
        self.backoff = backoff or Backoff()
        self._ca = ca
        self._verify = verify
        self._server_name = server_name
        self._index = 0  # edge we are (or will next be) connected to
        self._conn: EdgeConnection | None = None
        self._lock = asyncio.Lock()
        self.num_connects = 0  # connections opened (first one and failovers)

    # --- connections ----------------------------------------------------------------------------
    def _ticket_key(self, addr: Address) -> str:
        return f"{self._server_name or addr.host}@{addr.host}:{addr.port}"

    def _configuration(self, addr: Address, ticket: SessionTicket | None) -> QuicConfiguration:
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN_PROTOCOL],
            verify_mode=ssl.CERT_REQUIRED if self._verify else ssl.CERT_NONE,
            server_name=self._server_name or addr.host,
            session_ticket=ticket,
        )
        if self._ca is not None:
            config.load_verify_locations(cafile=self._ca)
        return config

    async def _open(self, addr: Address, deadline: float | None) -> EdgeConnection:
        key = self._ticket_key(addr)
        ticket = self.tickets.take(key)

        def keep(t: SessionTicket) -> None:
            self.tickets.put(key, t)

        conn = await open_connection(addr.host, addr.port, self._configuration(addr, ticket), keep)
        if self.liveness_timeout is not None:
            # half the budget silent before probing, the other half for the probe's answer
            conn.start_watchdog(self.liveness_timeout / 2, self.liveness_timeout / 2)
        if ticket is not None and self.early_data and ticket.max_early_data_size:
            # requests go out now as 0-RTT; a failed or late handshake shows up as ConnectionLost
            conn.expire_handshake(_budget(self.connect_timeout, deadline))
            return conn
        try:
            await asyncio.wait_for(conn.handshake_done(), _budget(self.connect_timeout, deadline))
        except BaseException:
            await close_connection(conn, grace=0.0)
            raise
        return conn

    async def _connection(self, deadline: float | None) -> EdgeConnection:
        """The live connection, or a new one to the first edge (from `_index`) that answers."""
        async with self._lock:
            if self._conn is not None and self._conn.is_usable:
                return self._conn
            failures: list[str] = []
            n = len(self.addresses)
            for k in range(n):
                i = (self._index + k) % n
                addr = self.addresses[i]
                try:
                    conn = await self._open(addr, deadline)
                except (OSError, TimeoutError, IsthmusError) as exc:
                    failures.append(f"{addr}: {exc or type(exc).__name__}")
                    continue
                self._index, self._conn = i, conn
                self.num_connects += 1
                return conn
            raise Unavailable("no edge reachable: " + "; ".join(failures))

    async def _drop(self, conn: EdgeConnection, *, advance: bool) -> None:
        """Forget `conn`; with `advance`, the next connection tries the following edge first."""
        if self._conn is conn:
            self._conn = None
            if advance:
                self._index = (self._index + 1) % len(self.addresses)
        await close_connection(conn, grace=0.0)

    async def connect(self) -> None:
        """Connect to the first healthy edge (done by `async with connect(...)`)."""
        await self._connection(None)

    async def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await close_connection(conn)

    async def rebind(self) -> int:
        """Move the live connection to a new local UDP port (connection migration); returns it."""
        if self._conn is None or not self._conn.is_usable:
            raise ConnectionLost("not connected")
        return await self._conn.rebind()

    @property
    def connection_info(self) -> ConnectionInfo | None:
        """How the live connection was set up (resumed? 0-RTT accepted?), None when not connected."""
        conn = self._conn
        if conn is None:
            return None
        addr = self.addresses[self._index]
        return ConnectionInfo(
            host=addr.host,
            port=addr.port,
            is_resumed=conn.is_resumed,
            is_early_data_accepted=conn.is_early_data_accepted,
            local_port=conn.local_port(),
        )

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- requests -------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, **kwargs: Any) -> ResponseStream:
        """Stream an answer. `prompt` is text, token ids or chat messages; keywords are the sampling
        options (max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty,
        frequency_penalty, seed, stop, stop_token_ids, logprobs, ignore_eos) and tier ("auto",
        "edge", "center"), priority, timeout (seconds), request_id.

        Arguments are validated now: a bad one raises `InvalidRequest` naming it.
        """
        built = build_request(prompt, api_key=self.api_key, default_timeout=self.timeout, kwargs=kwargs)
        return ResponseStream(self._run(built), built.request.id)

    async def complete(self, prompt: Prompt, **kwargs: Any) -> Completion:
        """The whole answer at once (same arguments as `generate`)."""
        stream = self.generate(prompt, **kwargs)
        async with stream:
            async for _ in stream:
                pass
        assert stream.completion is not None  # the stream only ends cleanly after Done
        return stream.completion

    async def _run(self, built: BuiltRequest) -> AsyncIterator[Chunk | Done]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + built.timeout if built.timeout is not None else None
        request = built.request
        attempt = 0
        while True:
            attempt += 1
            has_yielded = False
            conn: EdgeConnection | None = None
            stream = None
            try:
                conn = await self._connection(deadline)
                if attempt > 1:  # later attempts tell the edge what is left of the deadline
                    request = _with_budget(request, deadline, loop.time())
                stream = conn.open_request(request)
                while True:
                    event = await _next_event(stream, deadline, request.id)
                    if isinstance(event, TokenChunk):
                        has_yielded = True
                        yield Chunk.from_message(event)
                    elif isinstance(event, Done):
                        stream.finish()
                        yield event
                        return
                    else:
                        stream.finish()
                        raise from_error_message(_with_id(event, request.id))
            except IsthmusError as exc:
                moved = False
                if conn is not None and (not conn.is_usable or isinstance(exc, Draining)):
                    await self._drop(conn, advance=True)  # this edge is gone or leaving: next one
                    moved = True
                if has_yielded or not exc.retryable or attempt > self.retries:
                    raise
                delay = 0.0 if moved else self.backoff.delay(attempt)
                if deadline is not None and loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
            finally:
                if stream is not None and not stream.is_closed:
                    stream.cancel()  # break, aclose(), task cancellation, local deadline


def _budget(limit: float, deadline: float | None) -> float:
    if deadline is None:
        return limit
    return max(0.0, min(limit, deadline - asyncio.get_running_loop().time()))


def _with_budget(request: GenerateRequest, deadline: float | None, now: float) -> GenerateRequest:
    """The request with `timeout_ms` cut to what is left of the local deadline (on retries)."""
    if deadline is None:
        return request
    left_ms = max(1, int((deadline - now) * 1000.0))
    if request.timeout_ms is not None and left_ms >= request.timeout_ms:
        return request
    return msgspec.structs.replace(request, timeout_ms=left_ms)


def _with_id(error: Error, request_id: str) -> Error:
    return error if error.id else msgspec.structs.replace(error, id=request_id)


async def _next_event(
    stream: ClientStream, deadline: float | None, request_id: str
) -> TokenChunk | Done | Error:
    if deadline is None:
        return await stream.next_event()
    left = deadline - asyncio.get_running_loop().time()
    try:
        if left <= 0:
            raise TimeoutError
        async with asyncio.timeout(left):  # not wait_for: on 3.11 it can swallow the app's cancel
            return await stream.next_event()
    except TimeoutError:
        raise DeadlineExceeded("request timed out in the client", request_id=request_id) from None


@contextlib.asynccontextmanager
async def connect(
    address: str | Address | tuple[str, int] | Sequence[str | Address | tuple[str, int]],
    *,
    api_key: str | None = None,
    ca: str | None = None,
    verify: bool = True,
    server_name: str | None = None,
    timeout: float | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    ticket_store: TicketStore | None = None,
    early_data: bool = True,
    backoff: Backoff | None = None,
    liveness_timeout: float | None = DEFAULT_LIVENESS_TIMEOUT,
) -> AsyncIterator[Client]:
    """Connect to the first healthy edge of `address` (``"host:port"`` or a list of them).

    `ca` is a CA bundle path (None: the system's); `verify=False` skips certificate checks
    (tests only). `server_name` overrides the TLS name (default: the host). `timeout` is the
    default per-request deadline in seconds (None: none); `connect_timeout` bounds each handshake.
    `retries` is how many extra attempts a request may make (failovers included). `ticket_store`
    keeps session tickets for 0-RTT (share one between clients, or use `FileTicketStore`);
    `early_data=False` waits for the handshake before sending a request. `liveness_timeout`
    bounds how long requests wait on an edge that went silent (killed, unplugged): after half of it
    without a datagram the client pings, and a ping unanswered for the other half fails the
    connection over (None: rely on QUIC's idle timeout).
    """
    client = Client(
        parse_addresses(address),
        api_key=api_key,
        ca=ca,
        verify=verify,
        server_name=server_name,
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        ticket_store=ticket_store,
        early_data=early_data,
        backoff=backoff,
        liveness_timeout=liveness_timeout,
    )
    await client.connect()
    try:
        yield client
    finally:
        await client.close()
