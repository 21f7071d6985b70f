"""A small fake edge for the SDK tests: a QUIC server that streams canned chunks.

What it does depends on the prompt:
- anything else: `chunks` (with `chunk_delay` seconds between them), then `Done`;
- ``"drop"``: closes the whole connection before any token (a crashed edge), also done for the
  next `num_drops` requests whatever their prompt;
- ``"drop-after-1"``: one chunk, then closes the connection;
- ``"hang"``: never answers;
- ``"slow:N"``: N chunks 50 ms apart, then `Done`.
`is_silent` makes it take requests and never answer them; `vanish()` closes its socket without a
word, as a SIGKILLed edge process does (clients hear nothing more, not even CONNECTION_CLOSE).
`fail_next` holds `Error`s to answer the next requests with. It records what it saw (requests,
Cancel frames, stream resets, aborted generations, requests that arrived as 0-RTT early data,
peer addresses) so tests can check the client's behaviour from the edge's side.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicErrorCode
from aioquic.tls import SessionTicket
from isthmus.protocol import (
    ALPN_PROTOCOL,
    Cancel,
    Done,
    Error,
    FrameDecoder,
    GenerateRequest,
    Route,
    Timings,
    TokenChunk,
    Usage,
    encode_frame,
    pack_ids,
)

SLOW_CHUNK_DELAY = 0.05  # seconds between chunks of a "slow:N" answer


class FakeEdgeProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *, edge: FakeEdge) -> None:
        super().__init__(quic, stream_handler)
        self.edge = edge
        self.is_handshake_done = False
        self.peer_addrs: list[Any] = []
        self._decoders: dict[int, FrameDecoder] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        edge.connections.append(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if addr not in self.peer_addrs:
            self.peer_addrs.append(addr)
        super().datagram_received(data, addr)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self.is_handshake_done = True
        elif isinstance(event, events.StreamDataReceived):
            decoder = self._decoders.setdefault(event.stream_id, FrameDecoder())
            for msg in decoder.feed(event.data):
                if isinstance(msg, GenerateRequest):
                    self.edge.requests.append(msg)
                    if not self.is_handshake_done:
                        self.edge.early_request_ids.append(msg.id)
                    task = asyncio.get_running_loop().create_task(self._answer(event.stream_id, msg))
                    self._tasks[event.stream_id] = task
                elif isinstance(msg, Cancel):
                    self.edge.cancelled_ids.append(msg.id)
                    self._abort(event.stream_id)
        elif isinstance(event, events.StreamReset):
            self.edge.reset_stream_ids.append(event.stream_id)
            self._abort(event.stream_id)

    def _abort(self, stream_id: int) -> None:
        task = self._tasks.get(stream_id)
        if task is not None and not task.done():
            task.cancel()

    def _send(self, stream_id: int, msg: TokenChunk | Done | Error, end: bool = False) -> None:
        with contextlib.suppress(ValueError, AssertionError):
            self._quic.send_stream_data(stream_id, encode_frame(msg), end_stream=end)
        self.transmit()

    def _drop(self) -> None:
        self.close(error_code=QuicErrorCode.INTERNAL_ERROR, reason_phrase="fake edge crashed")

    async def _answer(self, stream_id: int, req: GenerateRequest) -> None:
        edge = self.edge
        try:
            if edge.fail_next:
                error = edge.fail_next.pop(0)
                self._send(
                    stream_id,
                    Error(id=req.id, code=error.code, message=error.message, retryable=error.retryable),
                    end=True,
                )
                return
            prompt = req.prompt or ""
            if edge.is_silent:
                await asyncio.Event().wait()
            if prompt == "drop" or edge.num_drops > 0:
                edge.num_drops -= 1
                self._drop()
                return
            if prompt == "hang":
                await asyncio.Event().wait()
            chunks, delay = list(edge.chunks), edge.chunk_delay
            if prompt.startswith("slow:"):
                chunks, delay = [f"t{i} " for i in range(int(prompt[5:]))], SLOW_CHUNK_DELAY
            for i, text in enumerate(chunks):
                if i and delay:
                    await asyncio.sleep(delay)
                logprobs = [-0.5] if req.sampling.logprobs is not None else None
                self._send(
                    stream_id,
                    TokenChunk(
                        id=req.id, token_ids=pack_ids([100 + i]), text=text, logprobs=logprobs, tier="edge"
                    ),
                )
                if prompt == "drop-after-1":
                    await asyncio.sleep(0.01)
                    self._drop()
                    return
            done = Done(
                id=req.id,
                finish_reason="length",
                usage=Usage(prompt_tokens=3, completion_tokens=len(chunks)),
                route=Route(tier="edge", reason="wish_edge", score=0.25),
                timings=Timings(queue_ms=1.0, first_token_ms=2.0, total_ms=3.0),
                model="fake",
            )
            self._send(stream_id, done, end=True)
            edge.completed_ids.append(req.id)
        except asyncio.CancelledError:
            edge.aborted_ids.append(req.id)
            raise


class FakeEdge:
    """A fake edge on 127.0.0.1 (ephemeral port) with session tickets and 0-RTT."""

    def __init__(
        self,
        certfile: str,
        keyfile: str,
        *,
        chunks: tuple[str, ...] = ("Hel", "lo", " world"),
        chunk_delay: float = 0.0,
    ) -> None:
        self.certfile, self.keyfile = certfile, keyfile
        self.chunks, self.chunk_delay = chunks, chunk_delay
        self.fail_next: list[Error] = []
        self.num_drops = 0
        self.is_silent = False
        self.requests: list[GenerateRequest] = []
        self.early_request_ids: list[str] = []
        self.cancelled_ids: list[str] = []
        self.reset_stream_ids: list[int] = []
        self.aborted_ids: list[str] = []
        self.completed_ids: list[str] = []
        self.connections: list[FakeEdgeProtocol] = []
        self._tickets: dict[bytes, SessionTicket] = {}
        self._server: QuicServer | None = None

    async def start(self) -> FakeEdge:
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN_PROTOCOL], idle_timeout=10.0)
        config.load_cert_chain(self.certfile, self.keyfile)
        self._server = await serve(
            "127.0.0.1",
            0,
            configuration=config,
            create_protocol=lambda quic, stream_handler=None: FakeEdgeProtocol(
                quic, stream_handler, edge=self
            ),
            session_ticket_fetcher=self._tickets.pop,
            session_ticket_handler=lambda t: self._tickets.__setitem__(t.ticket, t),
        )
        return self

    @property
    def port(self) -> int:
        assert self._server is not None and self._server._transport is not None
        return int(cast(Any, self._server._transport).get_extra_info("sockname")[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def vanish(self) -> None:
        """Stop sending and receiving at once, closing no connection (a killed process)."""
        if self._server is not None:
            transport = self._server._transport
            self._server = None
            if transport is not None:
                transport.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class LatencyProxy(asyncio.DatagramProtocol):
    """A UDP relay that delays every datagram by `delay` seconds each way (RTT = 2 * delay)."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target = ("127.0.0.1", target_port)
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Any, asyncio.DatagramTransport] = {}
        self._pending: dict[Any, list[bytes]] = {}  # datagrams waiting for their upstream socket
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> LatencyProxy:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        upstream = self._upstreams.get(addr)
        if upstream is None:
            if addr not in self._pending:
                self._pending[addr] = []
                self._tasks.add(loop.create_task(self._open_upstream(addr)))
            self._pending[addr].append(data)
        else:
            loop.call_later(self.delay, upstream.sendto, data)

    async def _open_upstream(self, client_addr: Any) -> None:
        proxy = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                assert proxy.transport is not None
                asyncio.get_running_loop().call_later(proxy.delay, proxy.transport.sendto, data, client_addr)

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
        self._upstreams[client_addr] = cast(asyncio.DatagramTransport, transport)
        for data in self._pending.pop(client_addr):
            loop.call_later(self.delay, transport.sendto, data)

    def close(self) -> None:
        for upstream in self._upstreams.values():
            upstream.close()
        if self.transport is not None:
            self.transport.close()
