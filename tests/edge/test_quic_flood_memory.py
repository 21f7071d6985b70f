"""Edge memory under a partial-frame flood, measured: the edge runs in its own process and its RSS
is read before, during and after the flood (printed; run with ``-s`` to see the figures).

Before the receive budgets one connection could make the edge hold 64 streams x 4 MiB; now each
connection holds at most its budget, and the memory comes back once the flood is gone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from isthmus.protocol import Done, ErrorCode

from .quic_helpers import final, raw_client, write_self_signed
from .test_quic_limits import KiB, MiB, errors_with, flood, req

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

# Python QUIC on a shared CPU moves well under 1 MB/s per connection, so the flood is scaled
# down from the probe's 64 x 4 MiB, with the per-connection budget scaled with it;
# FLOOD_SCALE=4 (say) makes a bigger one.
SCALE = int(os.environ.get("FLOOD_SCALE", "1"))
NUM_CONNECTIONS = 4
STREAMS_PER_CONNECTION = 64
BYTES_PER_STREAM = 64 * KiB * SCALE  # 16 MiB x SCALE of partial frames attempted in all
BUDGET_PER_CONNECTION = 2 * MiB * SCALE  # what the edge may hold per connection

SERVER = """
import asyncio, sys
from isthmus.edge.auth import ApiKey, ApiKeyStore, hash_key
from isthmus.edge.quic_server import EdgeQuicServer, QuicLimits
from isthmus.edge.receive_budget import ReceiveLimits
from tests.edge.test_quic_limits import Handler, KEY

async def main():
    store = ApiKeyStore([ApiKey(hash_key(KEY), name="k")])
    # all 64 partial streams per connection allowed: the byte budget alone is under test
    receive = ReceiveLimits(max_per_connection=int(sys.argv[3]), max_pending_streams_unproven=64)
    limits = QuicLimits(receive=receive)
    server = EdgeQuicServer(
        Handler(store), certfile=sys.argv[1], keyfile=sys.argv[2], auth=store, limits=limits
    )
    await server.start()
    print(server.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await server.close()

asyncio.run(main())
"""


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
async def test_partial_frame_flood_memory_is_bounded_and_comes_back(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, cert, key, str(BUDGET_PER_CONNECTION)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=root,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.to_thread(proc.stdout.readline))
        async with raw_client(port) as warm:  # warm the edge up before the baseline
            for _ in range(20):
                assert isinstance(final(await warm.request(req())), Done)
        before = rss(proc.pid)
        async with raw_client(port) as c1, raw_client(port) as c2, raw_client(port) as c3:
            async with raw_client(port) as c4:
                attackers = [c1, c2, c3, c4]
                for a in attackers:
                    await flood(a, STREAMS_PER_CONNECTION, BYTES_PER_STREAM)
                num_fit = BUDGET_PER_CONNECTION // BYTES_PER_STREAM
                for a in attackers:  # each connection keeps what fits its budget, the rest is shed
                    await asyncio.wait_for(_until_shed(a, STREAMS_PER_CONNECTION - num_fit), 90 * SCALE)
                during = rss(proc.pid)
                async with raw_client(port) as legit:
                    assert isinstance(final(await legit.request(req())), Done)
        await asyncio.sleep(2.0)  # connections terminate, the edge trims its heap
        after = rss(proc.pid)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        await asyncio.to_thread(proc.wait, 30)
    attempted = NUM_CONNECTIONS * STREAMS_PER_CONNECTION * BYTES_PER_STREAM
    print(
        f"\npartial-frame flood: {NUM_CONNECTIONS} connections x {STREAMS_PER_CONNECTION} streams x "
        f"{BYTES_PER_STREAM // KiB} KiB = {attempted / MiB:.0f} MiB attempted; edge RSS before "
        f"{before / MiB:.1f} MiB, during {during / MiB:.1f} MiB (+{(during - before) / MiB:.1f}), "
        f"after {after / MiB:.1f} MiB (+{(after - before) / MiB:.1f})"
    )
    held_max = NUM_CONNECTIONS * BUDGET_PER_CONNECTION
    assert during - before <= held_max + 32 * MiB  # the budgets, plus the interpreter's slack
    assert after - before <= held_max // 2 + 8 * MiB


async def _until_shed(client, num: int) -> None:  # type: ignore[no-untyped-def]
    while len(errors_with(client, ErrorCode.OVERLOADED)) < num:
        await asyncio.sleep(0.05)
