"""Floods: partial frames, idle connections, huge prompts, wrong keys.

During each flood a legitimate client (127.0.0.1, a fresh SDK connection) runs a light greedy
load; its p99 first-token latency is reported next to the unloaded value (target: under 2x),
with the edge's RSS before, at its peak and after. Tests assert correctness only: the legitimate
client sees no failure or corrupted answer, attackers get typed errors and never INTERNAL, the
edge stays up. Wall-clock figures are reported, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from isthmus.client import connect
from isthmus.protocol import GenerateRequest, SamplingOptions
from isthmus.protocol.limits import MAX_FRAME_SIZE

from .attack import AttackStats, attacker, sample_rss, source
from .conftest import API_KEY, Network, pick, record
from .load import LoadStats, References, run_load
from .procs import Proc, edge_toml, spawn_edge, start_all

PROBE_S = pick(6.0, 30.0)  # seconds of legitimate load per measurement
PROBE_CONCURRENCY = 4
NUM_IDLE = pick(300, 1100)  # idle connections (the default per-source limit is 256, global 1024)
NUM_PARTIAL_CONNS, PARTIAL_STREAMS = pick((8, 16), (32, 64))
PARTIAL_BYTES = pick(256 * 1024, 1024 * 1024)  # bytes of each never-finished frame
NUM_PROMPT_ATTACKERS = pick(2, 4)
HUGE_PROMPT = "漢字" * 500_000  # 1M characters, 3 MB of UTF-8
NUM_KEY_ATTACKERS = pick(8, 32)
pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(pick(300, 1200))]

Flood = Callable[[Proc, asyncio.Event, AttackStats], Awaitable[None]]


@pytest.fixture(scope="module")
def flood_edge(
    tmp_path_factory: pytest.TempPathFactory, models: tuple[Path, Path], certs: tuple[str, str]
) -> Iterator[Proc]:
    """An edge with default limits (no center: the probe asks for the edge tier)."""
    workdir = tmp_path_factory.mktemp("floods")
    net = Network(workdir)
    try:
        edge = spawn_edge(workdir, "edge-floods", edge_toml(models[0], certs, API_KEY, []))
        net.add(edge)
        start_all([edge])
        yield edge
    finally:
        net.close()


@pytest.fixture(scope="module")
def baseline(flood_edge: Proc, refs: References, certs: tuple[str, str]) -> LoadStats:
    """The legitimate client's figures with no flood."""
    return asyncio.run(_probe(flood_edge, refs, certs))


async def _probe(edge: Proc, refs: References, certs: tuple[str, str]) -> LoadStats:
    async with connect(edge.address, api_key=API_KEY, ca=certs[0]) as client:
        return await run_load(
            client, refs, concurrency=PROBE_CONCURRENCY, duration_s=PROBE_S, tiers=("edge",), hang_s=60.0
        )


async def _run_flood(
    name: str, flood: Flood, edge: Proc, refs: References, certs: tuple[str, str], baseline: LoadStats
) -> tuple[LoadStats, AttackStats]:
    stop, stats, rss = asyncio.Event(), AttackStats(), [edge.rss()]
    sampler = asyncio.create_task(sample_rss(edge.rss, stop, rss))
    task = asyncio.create_task(flood(edge, stop, stats))
    await asyncio.sleep(pick(2.0, 5.0))  # let the flood build up
    try:
        during = await _probe(edge, refs, certs)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await sampler
    await asyncio.sleep(2.0)
    base, now = baseline.summary()["ttft_p99_ms"], during.summary()["ttft_p99_ms"]
    ratio = round(now / base, 2) if isinstance(base, float) and isinstance(now, float) and base else None
    record(
        f"flood_{name}",
        {
            "legit_unloaded": baseline.summary(),
            "legit_during": during.summary(),
            "ttft_p99_ratio": ratio,
            "attackers": stats.summary(),
            "edge_rss_mb": {
                "before": round(rss[0] / 2**20, 1),
                "peak": round(max(rss) / 2**20, 1),
                "after": round(edge.rss() / 2**20, 1),
            },
        },
    )
    assert edge.is_alive(), edge.tail()
    assert during.outcomes["ok"] == during.num_started > 0, during.summary()
    assert stats.codes["INTERNAL"] == 0, stats.summary()
    return during, stats


# --- the floods ---------------------------------------------------------------------------------
async def partial_frames(edge: Proc, stop: asyncio.Event, stats: AttackStats) -> None:
    """Connections whose streams each announce a maximal frame, send part of it and stall."""
    header = struct.pack(">I", MAX_FRAME_SIZE)

    async def one(i: int) -> None:
        while not stop.is_set():
            try:
                async with attacker(edge.port, source(i)) as c:
                    for _ in range(PARTIAL_STREAMS):
                        c.send(header + b"\x00" * PARTIAL_BYTES, end_stream=False)
                        stats.num_sent += 1
                    closed = c._closed  # set when the edge closes the connection on us
                    while not stop.is_set() and not closed.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.25)
                    if closed.is_set():
                        stats.codes["CLOSED_BY_EDGE"] += 1
            except (OSError, TimeoutError, ConnectionError):
                stats.num_connect_failures += 1
                await asyncio.sleep(0.2)

    await asyncio.gather(*(one(i) for i in range(NUM_PARTIAL_CONNS)))


async def idle_connections(edge: Proc, stop: asyncio.Event, stats: AttackStats) -> None:
    """Many handshaken connections that never send a stream, from a few attacker addresses."""
    async with contextlib.AsyncExitStack() as stack:
        for i in range(NUM_IDLE):
            if stop.is_set():
                break
            try:
                await stack.enter_async_context(attacker(edge.port, source(i % 4)))
                stats.num_sent += 1
            except (OSError, TimeoutError, ConnectionError):
                stats.num_connect_failures += 1
        await stop.wait()


async def huge_prompts(edge: Proc, stop: asyncio.Event, stats: AttackStats) -> None:
    """Authenticated clients sending 1M-character prompts back to back."""
    req = GenerateRequest(
        id="huge", prompt=HUGE_PROMPT, api_key=API_KEY, tier="edge", sampling=SamplingOptions(max_tokens=1)
    )

    async def one(i: int) -> None:
        async with attacker(edge.port, source(100 + i)) as c:
            while not stop.is_set():
                stats.num_sent += 1
                try:
                    sid = c.send_message(req)
                    stats.note_end(await c.wait_end(sid, 60.0), sid in c.resets)
                except TimeoutError:
                    stats.num_no_answer += 1

    await asyncio.gather(*(one(i) for i in range(NUM_PROMPT_ATTACKERS)))


async def wrong_keys(edge: Proc, stop: asyncio.Event, stats: AttackStats) -> None:
    """Clients guessing API keys as fast as the edge answers."""

    async def one(i: int) -> None:
        async with attacker(edge.port, source(200 + i)) as c:
            n = 0
            while not stop.is_set():
                n += 1
                stats.num_sent += 1
                req = GenerateRequest(
                    id=f"k{i}-{n}",
                    prompt="hi",
                    api_key=f"sk-guess-{i}-{n}",
                    tier="edge",
                    sampling=SamplingOptions(max_tokens=1),
                )
                try:
                    sid = c.send_message(req)
                    stats.note_end(await c.wait_end(sid, 30.0), sid in c.resets)
                except TimeoutError:
                    stats.num_no_answer += 1

    await asyncio.gather(*(one(i) for i in range(NUM_KEY_ATTACKERS)))


# --- the tests ----------------------------------------------------------------------------------
async def test_partial_frame_flood(
    flood_edge: Proc, refs: References, certs: tuple[str, str], baseline: LoadStats
) -> None:
    await _run_flood("partial_frames", partial_frames, flood_edge, refs, certs, baseline)


async def test_idle_connection_flood(
    flood_edge: Proc, refs: References, certs: tuple[str, str], baseline: LoadStats
) -> None:
    await _run_flood("idle_connections", idle_connections, flood_edge, refs, certs, baseline)


async def test_huge_prompt_flood(
    flood_edge: Proc, refs: References, certs: tuple[str, str], baseline: LoadStats
) -> None:
    _, stats = await _run_flood("huge_prompts", huge_prompts, flood_edge, refs, certs, baseline)
    assert stats.num_sent > 0 and set(stats.codes) <= {"PROMPT_TOO_LONG", "INVALID_MESSAGE"}, stats.summary()


async def test_wrong_key_flood(
    flood_edge: Proc, refs: References, certs: tuple[str, str], baseline: LoadStats
) -> None:
    _, stats = await _run_flood("wrong_keys", wrong_keys, flood_edge, refs, certs, baseline)
    assert stats.num_sent > 0 and set(stats.codes) <= {"UNAUTHENTICATED", "RATE_LIMITED"}, stats.summary()
