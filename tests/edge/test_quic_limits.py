"""Limits that hold before authentication, over real QUIC on loopback: receive budgets against
partial-frame floods, the per-source connection cap, idle eviction, and wrong-key throttling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioquic.quic.packet import QuicErrorCode
from isthmus.edge.auth import ApiKey, ApiKeyStore, hash_key
from isthmus.edge.auth_throttle import FailureThrottle, ThrottleLimits
from isthmus.edge.quic_limits import default_strike_limits
from isthmus.edge.quic_server import EdgeQuicServer, QuicLimits
from isthmus.edge.receive_budget import ReceiveLimits
from isthmus.edge.source_gate import GateLimits
from isthmus.protocol import (
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    Route,
    SamplingOptions,
    TokenChunk,
    encode_frame,
    error_message,
)

from .quic_helpers import RawClient, final, raw_client, write_self_signed

pytestmark = pytest.mark.timeout(90)

KiB, MiB = 1024, 1024 * 1024
KEY = "sk-right"


def req(prompt: str = "hi", api_key: str | None = KEY, id: str = "r") -> GenerateRequest:
    return GenerateRequest(id=id, prompt=prompt, api_key=api_key, sampling=SamplingOptions(max_tokens=1))


def partial_header(body_len: int = 4 * MiB) -> bytes:
    """A frame header announcing a body that will never be completed."""
    return struct.pack(">I", body_len)


class Handler:
    """Admits by API key (like the orchestrator does), then answers with one chunk."""

    def __init__(self, store: ApiKeyStore) -> None:
        self.store = store

    async def __call__(self, req: GenerateRequest) -> AsyncIterator[TokenChunk | Done | Error]:
        try:
            lease = self.store.acquire(req.api_key)
        except ProtocolError as exc:
            yield error_message(req.id, exc)
            return
        with lease:
            yield TokenChunk(id=req.id, text="ok", tier="edge")
            yield Done(id=req.id, finish_reason="stop", route=Route(tier="edge", reason="wish_edge"))


@pytest.fixture
def certs(tmp_path: Path) -> tuple[str, str]:
    return write_self_signed(tmp_path)


@pytest.fixture
async def serve(certs: tuple[str, str]):  # type: ignore[no-untyped-def]
    servers: list[EdgeQuicServer] = []

    async def make(limits: QuicLimits, throttle: ThrottleLimits | None = None) -> EdgeQuicServer:
        store = ApiKeyStore([ApiKey(hash_key(KEY), name="k")], throttle=throttle)
        server = EdgeQuicServer(
            Handler(store), certfile=certs[0], keyfile=certs[1], limits=limits, auth=store
        )
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


async def wait_until(pred, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def errors_with(client: RawClient, code: ErrorCode) -> list[Error]:
    return [m for msgs in client.messages.values() for m in msgs if isinstance(m, Error) and m.code == code]


async def flood(client: RawClient, num_streams: int, num_bytes: int) -> list[int]:
    """Open `num_streams` streams, each holding a partial frame of `num_bytes` body bytes."""
    sids = []
    for _ in range(num_streams):
        sids.append(client.send(partial_header() + b"\0" * num_bytes, end_stream=False))
        await asyncio.sleep(0)
    return sids


async def test_partial_frame_flood_is_held_within_the_connection_budget(serve) -> None:  # type: ignore[no-untyped-def]
    # many partial streams per connection allowed: the byte budget alone is under test here
    budget = ReceiveLimits(max_per_connection=1 * MiB, max_total=64 * MiB, max_pending_streams_unproven=64)
    server = await serve(QuicLimits(receive=budget))
    async with raw_client(server.port) as attacker:
        await flood(attacker, num_streams=16, num_bytes=200 * KiB)  # 3.2 MiB of partial frames
        # at most 5 streams of 200 KiB fit in 1 MiB: the rest are answered OVERLOADED (retryable)
        await wait_until(lambda: len(errors_with(attacker, ErrorCode.OVERLOADED)) >= 11)
        assert all(e.retryable for e in errors_with(attacker, ErrorCode.OVERLOADED))
        assert server.budget.peak_total <= budget.max_per_connection + 64 * KiB
        assert server.budget.total <= budget.max_per_connection
        # the connection itself still serves requests, and so does another one
        assert isinstance(final(await attacker.request(req())), Done)
        async with raw_client(server.port) as other:
            assert isinstance(final(await other.request(req())), Done)
    await wait_until(lambda: server.budget.total == 0)


async def test_edge_wide_budget_sheds_the_biggest_holder_not_the_newcomer(serve) -> None:  # type: ignore[no-untyped-def]
    budget = ReceiveLimits(
        max_per_connection=1 * MiB, max_total=int(1.5 * MiB), max_pending_streams_unproven=64
    )
    server = await serve(QuicLimits(receive=budget))
    async with raw_client(server.port) as flood1, raw_client(server.port) as flood2:
        await flood(flood1, num_streams=4, num_bytes=200 * KiB)
        await flood(flood2, num_streams=3, num_bytes=200 * KiB)
        await wait_until(lambda: server.budget.total >= 1.3 * MiB)
        assert not errors_with(flood1, ErrorCode.OVERLOADED)
        async with raw_client(server.port) as newcomer:
            frame = encode_frame(req("x" * (400 * KiB)))
            sid = newcomer.send(frame[: 300 * KiB], end_stream=False)  # pushes the total over
            await wait_until(lambda: errors_with(flood1, ErrorCode.OVERLOADED))
            newcomer.send(frame[300 * KiB :], end_stream=True, stream_id=sid)
            assert isinstance(final(await newcomer.wait_end(sid)), Done)
        assert not errors_with(flood2, ErrorCode.OVERLOADED)  # flood1 held more, so it paid
        assert server.budget.total <= budget.max_total


async def test_connections_from_one_source_are_capped(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(max_connections_per_source=2, evict_idle_after_s=60.0))
    async with raw_client(server.port) as first, raw_client(server.port) as second:
        async with raw_client(server.port) as third:
            await asyncio.wait_for(third.wait_closed(), 10)
        assert server.table.num_refused == 1
        assert isinstance(final(await first.request(req())), Done)
        assert isinstance(final(await second.request(req())), Done)


async def test_idle_connections_are_evicted_to_admit_a_new_client(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(max_connections=2, evict_idle_after_s=0.2))
    async with raw_client(server.port) as idle1, raw_client(server.port) as idle2:
        assert isinstance(final(await idle2.request(req())), Done)  # used, then idle
        await asyncio.sleep(0.4)
        async with raw_client(server.port) as newcomer:
            assert isinstance(final(await newcomer.request(req())), Done)
        # idle1 has been idle longest: it went, idle2 stayed
        await asyncio.wait_for(idle1.wait_closed(), 10)
        assert server.table.num_evicted == 1
        assert isinstance(final(await idle2.request(req())), Done)


async def test_wrong_keys_from_one_address_are_throttled_with_rate_limited(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(), ThrottleLimits(max_failures=3, window_s=600.0))
    async with raw_client(server.port) as proven, raw_client(server.port) as client:
        assert isinstance(final(await proven.request(req())), Done)
        for i in range(3):
            msg = final(await client.request(req(api_key=f"guess-{i}")))
            assert isinstance(msg, Error) and msg.code == ErrorCode.UNAUTHENTICATED
        # throttled: refused before the key is looked at, even the right key, with a retryable error
        msg = final(await client.request(req(api_key=KEY)))
        assert isinstance(msg, Error) and msg.code == ErrorCode.RATE_LIMITED and msg.retryable
        assert "retry in" in msg.message
        # a connection already answered with a valid key, from the same address, is still served
        assert isinstance(final(await proven.request(req())), Done)
        # until it presents a wrong key itself
        assert final(await proven.request(req(api_key="guess"))).code == ErrorCode.UNAUTHENTICATED
        assert final(await proven.request(req())).code == ErrorCode.RATE_LIMITED
    assert server.auth is not None and server.auth.throttle_retry_after("127.0.0.1") > 0  # type: ignore[attr-defined]


async def test_out_of_order_data_held_by_quic_counts_and_closes_the_connection(serve) -> None:  # type: ignore[no-untyped-def]
    # aioquic buffers data that arrives past a gap, and widens a stream's window as the highest
    # offset grows, so a peer that never sends byte 0 could make it hold without bound
    server = await serve(QuicLimits(receive=ReceiveLimits(max_per_connection=1 * MiB, max_total=64 * MiB)))
    async with raw_client(server.port) as attacker:
        sid = attacker._quic.get_next_available_stream_id()
        attacker._quic.send_stream_data(sid, b"\0" * (3 * MiB), end_stream=False)
        attacker._quic._streams[sid].sender._pending.subtract(0, 1)  # byte 0 never leaves
        attacker.transmit()
        await asyncio.wait_for(attacker.wait_closed(), 60)
        assert attacker._quic._close_event is not None
        assert attacker._quic._close_event.error_code == 0x3  # FLOW_CONTROL_ERROR
    await wait_until(lambda: server.budget.total == 0)
    assert server.budget.peak_total <= 1 * MiB + 64 * KiB


async def test_handshakes_beyond_the_cap_are_refused_cleanly(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(max_connections=1, evict_idle_after_s=60.0))
    async with contextlib.AsyncExitStack() as stack:
        # all three handshake at once: the pending cap and then the connection cap refuse two
        clients = await asyncio.gather(
            *(stack.enter_async_context(raw_client(server.port)) for _ in range(3))
        )
        await wait_until(lambda: sum(c._quic._close_event is not None for c in clients) == 2)
        (kept,) = [c for c in clients if c._quic._close_event is None]
        assert isinstance(final(await kept.request(req())), Done)
    await wait_until(lambda: server.num_connections == 0)


async def test_a_throttled_connection_is_closed_and_its_source_refused_new_ones(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(), ThrottleLimits(max_failures=2, window_s=600.0))
    async with raw_client(server.port) as proven, raw_client(server.port) as guesser:
        assert isinstance(final(await proven.request(req())), Done)
        for i in range(2):
            assert final(await guesser.request(req(api_key=f"guess-{i}"))).code == ErrorCode.UNAUTHENTICATED
        msg = final(await guesser.request(req(api_key="guess-2")))
        assert isinstance(msg, Error) and msg.code == ErrorCode.RATE_LIMITED and msg.retryable
        # after its first RATE_LIMITED answer the connection is closed with RATE_LIMITED as the
        # application error code, so further guesses cost the edge no stream work
        await asyncio.wait_for(guesser.wait_closed(), 10)
        assert guesser._quic._close_event is not None
        assert guesser._quic._close_event.error_code == int(ErrorCode.RATE_LIMITED)
        # a new connection from the throttled source is refused at its first packet, before any
        # TLS work: a stateless CONNECTION_CLOSE (CONNECTION_REFUSED) says why and for how long
        async with raw_client(server.port, wait_connected=False) as newcomer:
            newcomer.transmit()  # the first Initial (not sent by connect without wait_connected)
            await asyncio.wait_for(newcomer.wait_closed(), 10)
            event = newcomer._quic._close_event
            assert event is not None and event.error_code == QuicErrorCode.CONNECTION_REFUSED
            assert "failed API keys" in event.reason_phrase and "retry in" in event.reason_phrase
        assert server.gate.num_replied == 1 and server.table.num_refused_throttled == 0
        # the connection that proved a valid key before the throttle keeps being served
        assert isinstance(final(await proven.request(req())), Done)


async def test_streams_waiting_for_their_request_frame_are_capped_per_connection(serve) -> None:  # type: ignore[no-untyped-def]
    limits = ReceiveLimits(max_pending_streams=5, max_pending_streams_unproven=2)
    server = await serve(QuicLimits(receive=limits))
    async with raw_client(server.port) as attacker, raw_client(server.port) as proven:
        await flood(attacker, num_streams=10, num_bytes=1 * KiB)
        await wait_until(lambda: len(errors_with(attacker, ErrorCode.OVERLOADED)) >= 8)
        refused = errors_with(attacker, ErrorCode.OVERLOADED)
        assert all(e.retryable and "waiting for their request frame" in e.message for e in refused)
        (conn,) = [c for c in server._connections if c.num_streams]
        assert conn.num_pending_streams == 2
        # a request that arrives whole is still served on the same connection
        assert isinstance(final(await attacker.request(req())), Done)
        # once a request succeeded on a connection, it may hold the higher cap
        assert isinstance(final(await proven.request(req())), Done)
        await flood(proven, num_streams=7, num_bytes=1 * KiB)
        await wait_until(lambda: len(errors_with(proven, ErrorCode.OVERLOADED)) >= 2)
        assert sum(c.num_pending_streams for c in server._connections) == 2 + 5


async def test_an_oversized_request_header_is_refused_and_its_body_stopped(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(receive=ReceiveLimits(max_request_size=64 * KiB)))
    async with raw_client(server.port) as attacker:
        frame = encode_frame(req("x" * (2 * MiB)))
        sid = attacker.send(frame, end_stream=True)
        msg = final(await attacker.wait_end(sid))
        assert isinstance(msg, Error) and msg.code == ErrorCode.PROMPT_TOO_LONG
        # STOP_SENDING came with the answer: the client reset its side of the stream, so the
        # rest of the 2 MiB never left it
        streams = attacker._quic._streams
        await wait_until(lambda: sid not in streams or streams[sid].sender._reset_error_code is not None)
        assert server.budget.total == 0
        assert isinstance(final(await attacker.request(req())), Done)


async def test_a_blocked_source_is_refused_before_its_handshake_and_reconnections_dropped(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(gate=GateLimits(reply_interval_s=60.0)))
    async with raw_client(server.port) as held:  # a connection the source held before its block
        server.block_source("127.0.0.1", 30.0, "blocked for the test")
        async with raw_client(server.port, wait_connected=False) as first:
            first.transmit()  # the first Initial (not sent by connect without wait_connected)
            await asyncio.wait_for(first.wait_closed(), 10)
            assert "blocked for the test; retry in" in first._quic._close_event.reason_phrase  # type: ignore[union-attr]
        # within the reply interval: dropped unanswered, no connection (no TLS work) created
        async with raw_client(server.port, wait_connected=False) as second:
            second.transmit()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(second.wait_connected(), 0.5)
        assert server.gate.num_replied == 1 and server.gate.num_dropped >= 1
        assert server.num_connections == 1
        # packets of the connection the source already holds still pass
        assert isinstance(final(await held.request(req())), Done)


async def test_requests_refused_for_their_size_on_unproven_connections_throttle_the_source(serve) -> None:  # type: ignore[no-untyped-def]
    strikes = ThrottleLimits(max_failures=3, window_s=600.0)
    server = await serve(QuicLimits(receive=ReceiveLimits(max_request_size=1 * KiB), strikes=strikes))
    big = req("x" * (4 * KiB))
    async with raw_client(server.port) as proven, raw_client(server.port) as attacker:
        assert isinstance(final(await proven.request(req())), Done)
        for _ in range(4):  # a proven connection's refusals are not held against its address
            assert final(await proven.request(big)).code == ErrorCode.PROMPT_TOO_LONG
        assert server.strike_wait("127.0.0.1") == 0.0
        for _ in range(3):
            assert final(await attacker.request(big)).code == ErrorCode.PROMPT_TOO_LONG
        # out of credit: the unproven connection is closed, its source refused at the gate
        await asyncio.wait_for(attacker.wait_closed(), 10)
        event = attacker._quic._close_event
        assert event is not None and event.error_code == int(ErrorCode.RATE_LIMITED)
        assert "refused requests" in event.reason_phrase
        assert server.strike_wait("127.0.0.1") > 0 and len(server.gate) == 1
        assert isinstance(final(await proven.request(req())), Done)


async def test_streams_refused_for_holding_partial_frames_throttle_an_unproven_source(serve) -> None:  # type: ignore[no-untyped-def]
    limits = ReceiveLimits(max_pending_streams_unproven=2)
    server = await serve(QuicLimits(receive=limits, strikes=ThrottleLimits(max_failures=4, window_s=600.0)))
    async with raw_client(server.port) as attacker:
        await flood(attacker, num_streams=8, num_bytes=1 * KiB)  # 2 held, 6 refused: 6 strikes
        await asyncio.wait_for(attacker.wait_closed(), 10)
        event = attacker._quic._close_event
        assert event is not None and "refused requests" in event.reason_phrase
    # closing it freed the two partial frames it still held
    await wait_until(lambda: server.budget.total == 0 and server.num_connections == 0)
    assert server.strike_wait("127.0.0.1") > 0


async def test_aioquic_per_connection_info_lines_are_off_unless_configured(serve) -> None:  # type: ignore[no-untyped-def]
    quic_log = logging.getLogger("quic")
    try:
        quic_log.setLevel(logging.NOTSET)
        await serve(QuicLimits())
        assert quic_log.level == logging.WARNING  # one line per handshake/reset/close: off
        quic_log.setLevel(logging.INFO)  # an operator who asked for them keeps them
        await serve(QuicLimits())
        assert quic_log.level == logging.INFO
    finally:
        quic_log.setLevel(logging.NOTSET)


def test_a_source_out_of_strikes_waits_long_enough_to_matter_by_default() -> None:
    # a partial-frame attacker whose connection was closed came straight back when the first
    # wait was 0.5 s: a handshake and 32 more refusals each time
    strikes = FailureThrottle(default_strike_limits())
    for _ in range(31):
        strikes.record_failure("10.0.0.1", now=0.0)
    assert strikes.retry_after("10.0.0.1", now=0.0) == 0.0  # a burst of 32 refusals is allowed
    strikes.record_failure("10.0.0.1", now=0.0)
    assert strikes.retry_after("10.0.0.1", now=0.0) >= 10.0
    assert strikes.retry_after("10.0.0.1", now=9.0) > 0.0


async def test_a_refused_stream_gets_no_more_credit_when_its_peer_ignores_stop_sending(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(QuicLimits(receive=ReceiveLimits(max_request_size=1 * KiB)))
    async with raw_client(server.port) as attacker, raw_client(server.port) as honest:
        sid = attacker._quic.get_next_available_stream_id()
        attacker._quic.send_stream_data(sid, encode_frame(req("x" * (3 * MiB))), end_stream=True)
        # a peer that ignores STOP_SENDING: its side of the stream is never reset
        stream = attacker._quic._streams[sid]
        stream.sender.reset = lambda error_code: None  # type: ignore[method-assign]
        attacker.transmit()
        assert final(await attacker.wait_end(sid)).code == ErrorCode.PROMPT_TOO_LONG
        await asyncio.sleep(1.0)  # it keeps sending what its window allows
        # the edge never raised the stream's window past the first 64 KiB (aioquic alone doubles
        # it each time half is used, so the whole 3 MiB would have come)
        assert stream.max_stream_data_remote == QuicLimits().max_stream_data
        assert stream.sender._buffer_stop - stream.sender.next_offset > 2 * MiB  # still waiting to go
        # other streams, and other connections, are served as before
        assert isinstance(final(await attacker.request(req())), Done)
        assert isinstance(final(await honest.request(req())), Done)
