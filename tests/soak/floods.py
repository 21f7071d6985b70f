"""The four floods, each an attacker population run in its own process (`run_in_child`).

An attacker is another host: running the floods in a child process keeps their CPU work off the
legitimate client's event loop (the two machine cores are still shared). Each flood runs until
told to stop and reports what its attackers saw as an `AttackStats` summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
from isthmus.protocol import GenerateRequest, SamplingOptions
from isthmus.protocol.limits import MAX_FRAME_SIZE

from tests.edge.quic_helpers import RawClient

from .attack import AttackStats, attacker, source
from .mode import API_KEY, pick

NUM_IDLE = pick(300, 1100)  # idle connections (the default per-source limit is 256, global 1024)
NUM_PARTIAL_CONNS, PARTIAL_STREAMS = pick((8, 16), (32, 64))
PARTIAL_BYTES = pick(256 * 1024, 1024 * 1024)  # bytes of each never-finished frame
NUM_PROMPT_ATTACKERS = pick(2, 4)
HUGE_PROMPT = "漢字" * 500_000  # 1M characters, 3 MB of UTF-8
NUM_KEY_ATTACKERS = pick(8, 32)
IDLE_BATCH = 25  # idle connections opened at once
PARTIAL_SETTLE_S = pick(2.0, 5.0)  # seconds after the partial frames were queued
Ready = Callable[[], None]


# --- the floods ---------------------------------------------------------------------------------
async def partial_frames(port: int, stop: asyncio.Event, stats: AttackStats, ready: Ready) -> None:
    """Connections whose streams each announce a maximal frame, send part of it and stall."""
    header = struct.pack(">I", MAX_FRAME_SIZE)

    async def one(i: int) -> None:
        while not stop.is_set():
            try:
                async with attacker(port, source(i)) as c:
                    for _ in range(PARTIAL_STREAMS):
                        c.send(header + b"\x00" * PARTIAL_BYTES, end_stream=False)
                        stats.num_sent += 1
                    if stats.num_sent >= NUM_PARTIAL_CONNS * PARTIAL_STREAMS:
                        # the bytes leave at QUIC's pace: give them time to reach the edge
                        await asyncio.sleep(PARTIAL_SETTLE_S)
                        ready()
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


async def idle_connections(port: int, stop: asyncio.Event, stats: AttackStats, ready: Ready) -> None:
    """Many handshaken connections that never send a stream, from a few attacker addresses
    (opened IDLE_BATCH at a time; ready once all were tried)."""

    async def open_one(stack: contextlib.AsyncExitStack, i: int) -> None:
        try:
            await stack.enter_async_context(attacker(port, source(i % 4)))
            stats.num_sent += 1
        except (OSError, TimeoutError, ConnectionError):
            stats.num_connect_failures += 1

    async with contextlib.AsyncExitStack() as stack:
        for start in range(0, NUM_IDLE, IDLE_BATCH):
            if stop.is_set():
                break
            await asyncio.gather(
                *(open_one(stack, i) for i in range(start, min(NUM_IDLE, start + IDLE_BATCH)))
            )
        ready()
        await stop.wait()


async def _send_and_note(c: RawClient, req: GenerateRequest, timeout_s: float, stats: AttackStats) -> None:
    """Send one request on an attacker's connection and count how it ended."""
    stats.num_sent += 1
    try:
        sid = c.send_message(req)
        messages = await c.wait_end(sid, timeout_s)
    except TimeoutError:
        stats.num_no_answer += 1
        return
    if not messages and c._closed.is_set():
        # the edge closed the connection (its source is throttled) before answering
        stats.codes["CLOSED_BY_EDGE"] += 1
    else:
        stats.note_end(messages, sid in c.resets)


async def huge_prompts(port: int, stop: asyncio.Event, stats: AttackStats, ready: Ready) -> None:
    """Authenticated clients sending 1M-character prompts back to back (a connection the edge
    closes is replaced by a new one, as soon as the edge admits one)."""
    req = GenerateRequest(
        id="huge", prompt=HUGE_PROMPT, api_key=API_KEY, tier="edge", sampling=SamplingOptions(max_tokens=1)
    )

    async def one(c: RawClient, i: int) -> None:
        while not stop.is_set() and not c._closed.is_set():
            ready()  # the attackers are connected and sending
            await _send_and_note(c, req, 60.0, stats)

    await asyncio.gather(*(_connected(port, 100 + i, stop, stats, one) for i in range(NUM_PROMPT_ATTACKERS)))


async def wrong_keys(port: int, stop: asyncio.Event, stats: AttackStats, ready: Ready) -> None:
    """Clients guessing API keys as fast as the edge answers."""

    async def one(c: RawClient, i: int) -> None:
        n = 0
        while not stop.is_set() and not c._closed.is_set():
            n += 1
            ready()
            req = GenerateRequest(
                id=f"k{i}-{n}",
                prompt="hi",
                api_key=f"sk-guess-{i}-{n}",
                tier="edge",
                sampling=SamplingOptions(max_tokens=1),
            )
            await _send_and_note(c, req, 30.0, stats)

    await asyncio.gather(*(_connected(port, 200 + i, stop, stats, one) for i in range(NUM_KEY_ATTACKERS)))


async def _connected(
    port: int,
    i: int,
    stop: asyncio.Event,
    stats: AttackStats,
    body: Callable[[RawClient, int], Awaitable[None]],
) -> None:
    """Run `body` on a connection from attacker address `i`, reconnecting until `stop`; a refused or
    timed-out handshake is counted (`connect_failures`), not raised."""
    while not stop.is_set():
        try:
            async with attacker(port, source(i)) as c:
                await body(c, i)
        except (OSError, TimeoutError, ConnectionError):
            stats.num_connect_failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def cpu_burn(port: int, stop: asyncio.Event, stats: AttackStats, ready: Ready) -> None:
    """The control: an attacker process that burns one core and never talks to the edge.

    On two shared cores an attacker's own CPU work slows everyone; the probe's latency under this
    control separates that from what a flood costs the edge itself.
    """
    ready()
    data = b"x" * 65536
    while not stop.is_set():
        for _ in range(200):
            data = hashlib.sha256(data).digest() * 2048
        stats.num_sent += 1
        await asyncio.sleep(0)


FLOODS = {
    "partial_frames": partial_frames,
    "idle_connections": idle_connections,
    "huge_prompts": huge_prompts,
    "wrong_keys": wrong_keys,
    "cpu_burn": cpu_burn,
}


def _child(name: str, port: int, stop: Any, ready: Any, out: Any) -> None:
    async def main() -> AttackStats:
        stats, stop_here = AttackStats(), asyncio.Event()

        async def relay_stop() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            stop_here.set()

        relay = asyncio.create_task(relay_stop())
        try:
            await FLOODS[name](port, stop_here, stats, ready.set)
        finally:
            await relay
        return stats

    try:
        out.put(asyncio.run(main()).summary())
    except BaseException as exc:  # reported to the parent, which fails the test with it
        out.put({"error": f"{type(exc).__name__}: {exc}"})


class ChildFlood:
    """`FLOODS[name]` against 127.0.0.1:`port` in a spawned process; `stop()` returns its summary."""

    def __init__(self, name: str, port: int, cpus: set[int] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop, self._ready = ctx.Event(), ctx.Event()
        self._out = ctx.Queue()
        args = (name, port, self._stop, self._ready, self._out)
        self._proc = ctx.Process(target=_child, args=args, daemon=True)
        self._proc.start()
        if cpus is not None and self._proc.pid is not None:
            pin(self._proc.pid, cpus)  # before its event loop starts: its threads inherit it

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the attacker process has used so far."""
        return _cpu_s(self._proc.pid)

    async def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Wait (bounded) until the flood is built up (all idle connections open, ...)."""
        return bool(await asyncio.to_thread(self._ready.wait, timeout_s))

    async def stop(self, timeout_s: float = 90.0) -> dict[str, Any]:
        self._stop.set()
        try:
            summary: dict[str, Any] = await asyncio.to_thread(self._out.get, True, timeout_s)
        finally:
            await asyncio.to_thread(self._proc.join, 10)
            if self._proc.is_alive():
                self._proc.kill()
        return summary


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of process `pid` to `cpus` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def _cpu_s(pid: int | None) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.Error, ValueError):
        return 0.0
    return float(t.user + t.system)
