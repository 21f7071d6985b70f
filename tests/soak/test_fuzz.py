"""Fuzz: generated hostile frames against the edge's frame decoding, in-process and over QUIC.

In-process (``frames.fuzz_in_process``): 20,000 streams here, 1,000,000 under
``ISTHMUS_SOAK_LONG=1`` (or ``bench/reliability/fuzz_frames.py``): 0 crashes, no INTERNAL.
Over real QUIC against a real edge: 2,000 streams here, 50,000 long: every stream ends
with a typed `Error` (or a `Done`, for the few valid requests), none with INTERNAL, none
unanswered, and the edge stays up.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from .attack import AttackStats, attacker, source
from .conftest import API_KEY, Network, pick, record
from .frames import FrameFuzzer, fuzz_in_process
from .procs import Proc

NUM_IN_PROCESS = pick(20_000, 1_000_000)
NUM_OVER_QUIC = pick(2_000, 50_000)
STREAMS_PER_CONNECTION = 200  # then a fresh connection (several run at once)
NUM_CONNECTIONS = 8  # connections fuzzing at once
IN_FLIGHT_PER_CONNECTION = 16
FUZZ_SOURCES = 10_000  # the fuzzing connections' attacker addresses start at source(10_000)
pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(pick(300, 3600))]


def test_fuzz_frame_decoder_in_process() -> None:
    start = time.monotonic()
    counts = fuzz_in_process(NUM_IN_PROCESS, seed=2026)
    figures = {
        "frames": NUM_IN_PROCESS,
        "wall_s": round(time.monotonic() - start, 1),
        "outcomes": dict(counts),
    }
    record("fuzz_in_process", figures)
    assert counts["crash"] == 0, figures
    assert sum(v for k, v in counts.items() if not k.startswith("crash")) == NUM_IN_PROCESS


@pytest.fixture(scope="module")
def fuzz_edge(shared_net: Network) -> Proc:
    return shared_net["edge-shared"]


async def _fuzz_connection(
    edge: Proc, fuzzer: FrameFuzzer, budget: list[int], stats: AttackStats, i: int
) -> None:
    """Fuzzed streams on one connection, `IN_FLIGHT_PER_CONNECTION` at a time."""
    async with attacker(edge.port, source(i)) as c:
        sem = asyncio.Semaphore(IN_FLIGHT_PER_CONNECTION)

        async def one(data: bytes) -> None:
            async with sem:
                sid = c.send(data, end_stream=True)
                try:
                    stats.note_end(await c.wait_end(sid, 30.0), sid in c.resets)
                except TimeoutError:
                    stats.num_no_answer += 1

        tasks = []
        for _ in range(STREAMS_PER_CONNECTION):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            stats.num_sent += 1
            tasks.append(asyncio.create_task(one(fuzzer.frame())))
        await asyncio.gather(*tasks)


async def test_fuzz_frames_over_quic(fuzz_edge: Proc) -> None:
    fuzzer, stats, budget = FrameFuzzer(7, api_key=API_KEY), AttackStats(), [NUM_OVER_QUIC]
    start, rss_start = time.monotonic(), fuzz_edge.rss()
    rng = random.Random(7)

    async def lane(lane_id: int) -> None:
        n = 0
        while budget[0] > 0:
            n += 1
            # sources apart from the floods' attackers (which an earlier test may have got blocked)
            i = FUZZ_SOURCES + lane_id * 1000 + n + rng.randrange(3)
            await _fuzz_connection(fuzz_edge, fuzzer, budget, stats, i)

    await asyncio.gather(*(lane(k) for k in range(NUM_CONNECTIONS)))
    figures = {
        "frames": stats.num_sent,
        "wall_s": round(time.monotonic() - start, 1),
        **stats.summary(),
        "edge_rss_mb": {"start": round(rss_start / 2**20, 1), "end": round(fuzz_edge.rss() / 2**20, 1)},
    }
    record("fuzz_over_quic", figures)
    assert fuzz_edge.is_alive(), fuzz_edge.tail()
    assert stats.num_sent == NUM_OVER_QUIC
    assert stats.codes["INTERNAL"] == 0 and stats.num_no_answer == 0, figures
    assert stats.codes["NO_MESSAGE"] == 0, figures
