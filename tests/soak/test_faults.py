"""Faults under load: SIGKILL a tensor-parallel rank, a whole center replica, an edge.

Load runs through one shared SDK client while the fault is injected. What is promised:
- an answer that had no token yet when its server died is retried elsewhere (another replica by
  the edge's pool, another edge by the SDK) and completes with correct tokens;
- an answer cut after its first token ends with exactly one retryable error (counted as `cut`);
- nothing hangs (every request is bounded), nothing is corrupted, and traffic keeps flowing on
  what is left (a clean load phase after the fault must be all `ok` on the surviving tier).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from isthmus.client import connect

from .conftest import API_KEY, Network, pick, record
from .load import LoadStats, References, run_load
from .procs import Proc, edge_toml, spawn_center, spawn_edge, start_all

LOAD_S = pick(8.0, 90.0)  # seconds of load around each fault
FAULT_AT_S = pick(3.0, 30.0)  # seconds into the load
AFTER_S = pick(3.0, 30.0)  # seconds of clean load after the fault
CONCURRENCY = pick(32, 200)
HANG_S = 45.0  # a request still open after this is a hang
pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(pick(400, 1200))]


@pytest.fixture(scope="module")
def centers_net(
    tmp_path_factory: pytest.TempPathFactory, models: tuple[Path, Path], certs: tuple[str, str]
) -> Iterator[Network]:
    """Replicas A (TP=2 under torchrun), B and C (TP=1) behind two edges (1 and 2)."""
    workdir = tmp_path_factory.mktemp("faults")
    net = Network(workdir)
    try:
        replicas = [
            spawn_center(workdir, models[1], "center-a", tp=2),
            spawn_center(workdir, models[1], "center-b"),
            spawn_center(workdir, models[1], "center-c"),
        ]
        net.add(*replicas)
        start_all(replicas)
        toml = edge_toml(models[0], certs, API_KEY, [p.address for p in replicas])
        edges = [spawn_edge(workdir, f"edge-{i}", toml) for i in (1, 2)]
        net.add(*edges)
        start_all(edges)
        yield net
    finally:
        net.close()


async def _drill(
    address: str | list[str],
    certs: tuple[str, str],
    refs: References,
    fault: Proc | int,
    tiers: tuple[str, ...],
) -> tuple[LoadStats, LoadStats, int]:
    """Load, kill `fault` (a process group, or a pid) FAULT_AT_S in, then a clean phase.

    Returns (load stats around the fault, clean stats after it, connections the client opened).
    """

    async def inject() -> None:
        await asyncio.sleep(FAULT_AT_S)
        if isinstance(fault, Proc):
            await asyncio.to_thread(fault.kill)
        else:
            os.kill(fault, signal.SIGKILL)

    async with connect(address, api_key=API_KEY, ca=certs[0], retries=2) as client:
        task = asyncio.create_task(inject())
        during = await run_load(
            client, refs, concurrency=CONCURRENCY, duration_s=LOAD_S, hang_s=HANG_S, tiers=tiers
        )
        await task
        after = await run_load(
            client, refs, concurrency=CONCURRENCY, duration_s=AFTER_S, hang_s=HANG_S, tiers=tiers, seed=1
        )
        num_connects = client.num_connects
    return during, after, num_connects


def _check(during: LoadStats, after: LoadStats, surviving_tier: str) -> None:
    bad = {k: during.outcomes[k] + after.outcomes[k] for k in ("corrupt", "failed", "hang")}
    assert bad == {"corrupt": 0, "failed": 0, "hang": 0}, (during.summary(), after.summary())
    assert during.outcomes["ok"] > 0
    assert after.outcomes["ok"] == after.num_started > 0, after.summary()
    assert after.tiers.get(surviving_tier, 0) == after.num_started, after.summary()


async def test_sigkill_a_tp_rank_under_load(
    centers_net: Network, refs: References, certs: tuple[str, str]
) -> None:
    a = centers_net["center-a"]
    rank1 = a.rank_pid(1)
    during, after, _ = await _drill(centers_net["edge-1"].address, certs, refs, rank1, ("center",))
    record(
        "fault_tp_rank",
        {"during": during.summary(), "after": after.summary(), "replica_a_exited": not a.is_alive()},
    )
    assert centers_net["edge-1"].is_alive()
    _check(during, after, "center")


async def test_sigkill_a_center_replica_under_load(
    centers_net: Network, refs: References, certs: tuple[str, str]
) -> None:
    b = centers_net["center-b"]
    during, after, _ = await _drill(centers_net["edge-1"].address, certs, refs, b, ("center",))
    record("fault_replica", {"during": during.summary(), "after": after.summary()})
    assert centers_net["edge-1"].is_alive()
    _check(during, after, "center")


async def test_sigkill_an_edge_under_load(
    centers_net: Network, refs: References, certs: tuple[str, str]
) -> None:
    doomed, spare = centers_net["edge-2"], centers_net["edge-1"]
    addresses = [doomed.address, spare.address]
    during, after, num_connects = await _drill(addresses, certs, refs, doomed, ("edge", "center"))
    record(
        "fault_edge", {"during": during.summary(), "after": after.summary(), "client_connects": num_connects}
    )
    assert spare.is_alive()
    bad = {k: during.outcomes[k] + after.outcomes[k] for k in ("corrupt", "failed", "hang")}
    assert bad == {"corrupt": 0, "failed": 0, "hang": 0}, (during.summary(), after.summary())
    assert after.outcomes["ok"] == after.num_started > 0, after.summary()
    assert num_connects == 2  # the first edge, then the failover to the second
