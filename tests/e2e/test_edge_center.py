"""Edge and center end to end over real QUIC and real gRPC on loopback, with tiny models.

The center runs in-process (its gRPC server on an ephemeral port, its own engine and step
thread); the edge is a whole `EdgeNode` built from an `EdgeConfig`. Apps talk to it with the
client SDK, or with the raw test client where a test must misbehave (stop reading, send junk).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from isthmus.cli.network import free_port
from isthmus.client import connect
from isthmus.client.errors import Unauthenticated
from isthmus.edge.buffers import BufferLimits
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import Error, ErrorCode, GenerateRequest, SamplingOptions, TokenChunk, unpack_ids

from tests.edge.quic_helpers import final, raw_client, write_self_signed

from .edge_harness import Harness, start_center, start_edge

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

API_KEY = "test-key-1"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    edge = make_tiny_checkpoint(root / "edge", "llama", seed=11)
    center = make_tiny_checkpoint(root / "center", "llama", seed=12)
    return edge, center


@pytest.fixture
def certs(tmp_path: Path) -> tuple[str, str]:
    return write_self_signed(tmp_path)


@pytest.fixture
async def harness(models, certs, tmp_path) -> AsyncIterator[Harness]:  # type: ignore[no-untyped-def]
    h = Harness(models=models, certs=certs, tmp_path=tmp_path, api_key=API_KEY)
    try:
        yield h
    finally:
        await h.close()


def greedy(max_tokens: int) -> dict[str, Any]:
    return {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}


async def scrape(h: Harness) -> str:
    # /metrics needs a key when keys are configured, as the API does.
    headers = {"Authorization": f"Bearer {h.api_key}"}
    async with aiohttp.ClientSession() as session, session.get(h.metrics_url, headers=headers) as resp:
        assert resp.status == 200
        return await resp.text()


def series(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def wait_until(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_prompt_answered_at_the_edge(harness: Harness) -> None:
    node = await start_edge(harness, center_ports=[])
    async with connect(node.quic_address, api_key=API_KEY, verify=False) as client:
        answer = await client.complete("Hello there", tier="edge", **greedy(6))
    assert answer.route.tier == "edge" and answer.route.reason == "wish_edge"
    assert answer.usage.completion_tokens == 6 and answer.finish_reason == "length"
    text = await scrape(harness)
    assert series(text, "isthmus_edge_requests_total", tier="edge") >= 1
    assert series(text, "isthmus_edge_tokens_out_total") >= 6
    assert series(text, "isthmus_edge_ttft_seconds_count") >= 1
    assert series(text, "isthmus_edge_inter_token_seconds_count") >= 1
    for gauge in ("isthmus_edge_queue_depth", "isthmus_edge_kv_usage_ratio", "isthmus_edge_running"):
        assert gauge in text
    async with aiohttp.ClientSession() as session:
        base = harness.metrics_url.removesuffix("/metrics")
        async with session.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with session.get(base + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ready"]


async def test_hard_prompt_escalated_to_a_real_center(harness: Harness) -> None:
    center = await start_center(harness)
    node = await start_edge(harness, center_ports=[center.port], threshold=0.0)
    async with connect(node.quic_address, api_key=API_KEY, verify=False) as client:
        hard = "Prove that sqrt(2) is irrational, step by step."
        chunks = [c async for c in client.generate(hard, **greedy(6))]
        answer = await client.complete("Prove it.", **greedy(5))
    assert chunks and all(c.tier == "center" for c in chunks)
    assert answer.route.tier == "center" and answer.usage.completion_tokens == 5
    text = await scrape(harness)
    assert series(text, "isthmus_edge_escalations_total", when="before") >= 2


async def test_confidence_collapse_hands_over_mid_answer(harness: Harness) -> None:
    center = await start_center(harness)
    # threshold 0 nats over a window of 2: any token entropy collapses it after two tokens
    node = await start_edge(harness, center_ports=[center.port], threshold=1.1, confidence=(2, 0.0, 8))
    async with connect(node.quic_address, api_key=API_KEY, verify=False) as client:
        chunks = [c async for c in client.generate("Tell me a story", **greedy(8))]
    tiers = [c.tier for c in chunks]
    assert tiers[0] == "edge" and tiers[-1] == "center"
    first_center = tiers.index("center")
    assert all(t == "edge" for t in tiers[:first_center]) and all(t == "center" for t in tiers[first_center:])
    route = chunks[first_center].route
    assert route is not None and route.tier == "center" and route.reason == "confidence_collapse"
    assert sum(len(c.token_ids) for c in chunks) == 8  # no gap, no overlap in the budget
    text = await scrape(harness)
    assert series(text, "isthmus_edge_escalations_total", when="mid_answer") >= 1


async def test_cancelled_stream_frees_both_tiers(harness: Harness) -> None:
    center = await start_center(harness)
    node = await start_edge(harness, center_ports=[center.port], threshold=1.1)
    engine = node.engine
    total = engine.load().num_total_kv_blocks
    async with raw_client(node.quic_port) as client:
        local = client.send_message(_req("local", "edge", 2000))
        remote = client.send_message(_req("remote", "center", 2000))
        await client.first_message(local)
        await client.first_message(remote)
        assert center.service.status().num_running == 1
        client.reset(local)
        client.reset(remote)
        await wait_until(lambda: engine.load().num_free_kv_blocks == total)
        await wait_until(lambda: center.service.status().num_running == 0)
        await wait_until(lambda: node.quic.num_active_streams == 0)
    status = center.service.status()
    assert status.num_free_kv_blocks == status.num_total_kv_blocks


async def test_dead_center_replica_is_routed_around(harness: Harness) -> None:
    center = await start_center(harness)
    node = await start_edge(harness, center_ports=[_dead_port(), center.port], threshold=0.0)
    async with connect(node.quic_address, api_key=API_KEY, verify=False) as client:
        for _ in range(3):
            answer = await client.complete("Prove it.", **greedy(3))
            assert answer.route.tier == "center" and not answer.route.is_degraded
    text = await scrape(harness)
    assert series(text, "isthmus_edge_center_replica_healthy", endpoint=f"127.0.0.1:{center.port}") == 1
    assert series(text, "isthmus_edge_center_replica_healthy") == 1  # the dead one reports 0


async def test_center_unreachable_degrades_to_a_local_answer(harness: Harness) -> None:
    node = await start_edge(harness, center_ports=[_dead_port()], threshold=0.0)
    async with connect(node.quic_address, api_key=API_KEY, verify=False) as client:
        answer = await client.complete("Prove it.", tier="center", **greedy(3))
    assert answer.route.tier == "edge" and answer.route.is_degraded
    assert answer.route.reason == "center_unavailable"
    text = await scrape(harness)
    assert series(text, "isthmus_edge_requests_total", tier="edge", reason="center_unavailable") >= 1


async def test_slow_reader_stays_under_the_watermark(harness: Harness) -> None:
    buffers = BufferLimits(stream_high=4096, stream_low=1024, stream_hard=1 << 20, stall_timeout_s=0.5)
    node = await start_edge(harness, center_ports=[], buffers=buffers)
    async with raw_client(node.quic_port) as client:
        sid = client.send_message(_req("slow", "edge", 1500))
        await client.first_message(sid)
        client.stop_reading()
        await wait_until(lambda: node.quic.num_active_streams == 0, timeout=30)
        assert node.quic.max_stream_buffered <= buffers.stream_high + 1024
        client.resume_reading()
        last = final(await client.wait_end(sid))
        assert isinstance(last, Error) and last.code == ErrorCode.SLOW_READER
    total = node.engine.load().num_total_kv_blocks
    await wait_until(lambda: node.engine.load().num_free_kv_blocks == total)
    assert series(await scrape(harness), "isthmus_edge_errors_total", code="SLOW_READER") >= 1


async def test_bad_frames_and_unauthenticated(harness: Harness) -> None:
    node = await start_edge(harness, center_ports=[])
    async with raw_client(node.quic_port) as client:
        good = client.send_message(_req("good", "edge", 20))
        junk = client.send(b"\x00\x00\x00\x02\xc1\xc1")
        assert final(await client.wait_end(junk)).code == ErrorCode.INVALID_MESSAGE
        msgs = await client.wait_end(good)
        # Chunks may coalesce several tokens when the reader lags: count tokens, not chunks.
        assert sum(len(unpack_ids(m.token_ids)) for m in msgs if isinstance(m, TokenChunk)) == 20
    async with connect(node.quic_address, api_key="wrong", verify=False, retries=0) as client:
        with pytest.raises(Unauthenticated):
            await client.complete("Hello", **greedy(3))
    assert node.engine.load().num_running == 0
    text = await scrape(harness)
    assert series(text, "isthmus_edge_errors_total", code="UNAUTHENTICATED") >= 1
    assert series(text, "isthmus_edge_errors_total", code="INVALID_MESSAGE") >= 1


def _req(id: str, tier: str, max_tokens: int) -> GenerateRequest:
    return GenerateRequest(
        id=id,
        prompt="Hello there",
        tier=tier,  # type: ignore[arg-type]
        api_key=API_KEY,
        sampling=SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
    )


def _dead_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    return free_port()

