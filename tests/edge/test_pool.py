"""CenterPool against fake center replicas on loopback gRPC (generic msgpack handlers + health)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from isthmus.edge.breaker import BreakerState
from isthmus.edge.pool import CenterPool, CenterUnavailable
from isthmus.edge.replica import CenterTls, PoolOptions
from isthmus.edge.tls import ensure_self_signed
from isthmus.protocol import (
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    Route,
    Status,
    StatusRequest,
    TokenChunk,
    decode,
    encode,
    rpc,
)

pytestmark = pytest.mark.timeout(60)


class FakeCenter:
    """mode: ok | fail_before | fail_mid | overloaded | slow | garbage."""

    def __init__(self, name: str, mode: str = "ok", num_running: int = 0, serving: bool = True) -> None:
        self.name, self.mode, self.num_running, self.serving = name, mode, num_running, serving
        self.requests: list[GenerateRequest] = []
        self.cancelled = asyncio.Event()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, tls: tuple[bytes, bytes] | None = None) -> None:
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    rpc.SERVICE_NAME,
                    {
                        rpc.GENERATE_METHOD: grpc.unary_stream_rpc_method_handler(
                            self.generate, request_deserializer=decode, response_serializer=self.serialize
                        ),
                        rpc.STATUS_METHOD: grpc.unary_unary_rpc_method_handler(
                            self.status, request_deserializer=decode, response_serializer=encode
                        ),
                    },
                )
            ]
        )
        servicer = health.aio.HealthServicer()
        await servicer.set(
            "",
            health_pb2.HealthCheckResponse.SERVING
            if self.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        await self.server.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serialize(self, msg: Any) -> bytes:
        return msg if isinstance(msg, bytes) else encode(msg)

    async def status(self, req: StatusRequest, context: grpc.aio.ServicerContext) -> Status:
        return Status(
            tier="center",
            model=self.name,
            tokenizer_fingerprint="fp-" + self.name,
            num_running=self.num_running,
            is_ready=True,
        )

    async def generate(self, req: GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.requests.append(req)
        route = Route(tier="center", reason="wish_center")
        if self.mode == "fail_before":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replica is broken")
        if self.mode == "overloaded":
            yield Error(id=req.id, code=ErrorCode.OVERLOADED, message="busy", retryable=True)
            return
        if self.mode == "garbage":
            yield b"\xc1not msgpack"
            return
        try:
            for i in range(3):
                yield TokenChunk(id=req.id, text=f"{self.name}{i}", tier="center")
                if self.mode == "fail_mid" and i == 1:
                    await context.abort(grpc.StatusCode.INTERNAL, "gpu fell off")
                if self.mode == "slow":
                    await asyncio.sleep(30)
            yield Done(id=req.id, finish_reason="stop", route=route, model=self.name)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)


async def make(*centers: FakeCenter, extra: list[str] | None = None, **kw: Any) -> CenterPool:
    for c in centers:
        await c.start()
    options = PoolOptions(health_interval_s=3600, **kw)  # health rounds are driven by the test
    pool = CenterPool([c.endpoint for c in centers] + (extra or []), options=options)
    await pool.start()
    return pool


async def collect(pool: CenterPool, req: GenerateRequest) -> list[Any]:
    return [m async for m in pool.generate(req)]


def request(timeout_ms: int | None = None) -> GenerateRequest:
    return GenerateRequest(id="r1", prompt="hello", tier="center", timeout_ms=timeout_ms)


async def test_streams_from_a_healthy_replica() -> None:
    a = FakeCenter("a")
    pool = await make(a)
    try:
        assert pool.has_healthy()
        msgs = await collect(pool, request())
        assert [m.text for m in msgs[:-1]] == ["a0", "a1", "a2"]
        assert isinstance(msgs[-1], Done)
        assert a.requests[0].prompt == "hello"
        assert pool.tokenizer_fingerprint() == "fp-a"
        assert pool.replicas[0].num_outstanding == 0
    finally:
        await pool.close()
        await a.stop()


async def test_least_loaded_replica_is_picked() -> None:
    busy, idle = FakeCenter("busy", num_running=8), FakeCenter("idle", num_running=1)
    pool = await make(busy, idle)
    try:
        for _ in range(3):
            msgs = await collect(pool, request())
            assert msgs[0].text == "idle0"
        assert not busy.requests
    finally:
        await pool.close()
        await busy.stop()
        await idle.stop()


async def test_unhealthy_and_unreachable_are_skipped() -> None:
    sick = FakeCenter("sick", serving=False)
    pool = await make(sick, extra=["127.0.0.1:1"])  # port 1: nothing listens
    try:
        assert not pool.has_healthy()
        assert pool.load_view().is_center_healthy is False
        with pytest.raises(CenterUnavailable):
            await collect(pool, request())
        assert not sick.requests
    finally:
        await pool.close()
        await sick.stop()


async def test_failure_before_first_token_is_retried_elsewhere() -> None:
    broken, good = FakeCenter("broken", "fail_before"), FakeCenter("good", num_running=5)
    pool = await make(broken, good)  # broken looks less loaded, so it is tried first
    try:
        msgs = await collect(pool, request())
        assert broken.requests and good.requests
        assert msgs[0].text == "good0" and isinstance(msgs[-1], Done)
        assert pool.replicas[0].breaker.num_consecutive_failures == 1
    finally:
        await pool.close()
        await broken.stop()
        await good.stop()


@pytest.mark.parametrize("mode", ["overloaded", "garbage"])
async def test_refusal_or_garbage_is_retried(mode: str) -> None:
    bad, good = FakeCenter("bad", mode), FakeCenter("good", num_running=5)
    pool = await make(bad, good)
    try:
        msgs = await collect(pool, request())
        assert msgs[0].text == "good0"
    finally:
        await pool.close()
        await bad.stop()
        await good.stop()


async def test_all_refusing_passes_the_error_on() -> None:
    a = FakeCenter("a", "overloaded")
    pool = await make(a)
    try:
        msgs = await collect(pool, request())
        assert len(msgs) == 1 and isinstance(msgs[0], Error) and msgs[0].code == ErrorCode.OVERLOADED
    finally:
        await pool.close()
        await a.stop()


async def test_mid_stream_failure_is_a_retryable_error() -> None:
    a, b = FakeCenter("a", "fail_mid"), FakeCenter("b", num_running=5)
    pool = await make(a, b)
    try:
        msgs = await collect(pool, request())
        assert [m.text for m in msgs[:2]] == ["a0", "a1"]
        assert isinstance(msgs[-1], Error) and msgs[-1].retryable and msgs[-1].code == ErrorCode.UNAVAILABLE
        assert not b.requests  # tokens were streamed: no blind retry
    finally:
        await pool.close()
        await a.stop()
        await b.stop()


async def test_breaker_opens_on_a_replica_that_keeps_failing() -> None:
    broken = FakeCenter("broken", "fail_before")
    pool = await make(broken, breaker_failures=2, max_attempts=1)
    try:
        for _ in range(2):
            await pool.check_all()  # health says SERVING again each round
            with pytest.raises(CenterUnavailable):
                await collect(pool, request())
        await pool.check_all()
        assert pool.replicas[0].is_healthy
        assert pool.replicas[0].breaker.state(pool.clock()) is BreakerState.OPEN
        assert not pool.has_healthy()
    finally:
        await pool.close()
        await broken.stop()


async def test_deadline_propagates_and_expires() -> None:
    slow = FakeCenter("slow", "slow")
    pool = await make(slow)
    try:
        msgs = await collect(pool, request(timeout_ms=300))
        assert msgs[0].text == "slow0"
        assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.DEADLINE_EXCEEDED
        assert slow.requests[0].timeout_ms is not None and slow.requests[0].timeout_ms <= 300
    finally:
        await pool.close()
        await slow.stop()


async def test_closing_the_stream_cancels_the_center_call() -> None:
    slow = FakeCenter("slow", "slow")
    pool = await make(slow)
    try:
        gen = pool.generate(request())
        first = await anext(gen)
        assert first.text == "slow0"
        await gen.aclose()
        await asyncio.wait_for(slow.cancelled.wait(), 10)
        assert pool.replicas[0].num_outstanding == 0
    finally:
        await pool.close()
        await slow.stop()


async def test_tls_with_ca(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    ensure_self_signed(cert, key, hosts=["localhost", "127.0.0.1"])
    a = FakeCenter("a")
    await a.start(tls=(cert.read_bytes(), key.read_bytes()))
    pool = CenterPool(
        [a.endpoint], tls=CenterTls(ca_file=str(cert)), options=PoolOptions(health_interval_s=3600)
    )
    await pool.start()
    try:
        assert pool.has_healthy()
        msgs = await collect(pool, request())
        assert isinstance(msgs[-1], Done)
    finally:
        await pool.close()
        await a.stop()
