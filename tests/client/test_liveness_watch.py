"""`liveness.watch` without sockets: a fake connection whose silence and PING answers we control."""

from __future__ import annotations

import asyncio

import pytest
from isthmus.client.liveness import watch

pytestmark = pytest.mark.timeout(30)


class FakeConn:
    def __init__(self, *, num_open: int = 1, answers: bool = True) -> None:
        self.close_reason: str | None = None
        self.num_open = num_open
        self.answers = answers  # whether a probe is acknowledged
        self.silent_since = asyncio.get_running_loop().time()
        self.num_probes = 0
        self.forgotten = 0

    def num_open_requests(self) -> int:
        return self.num_open

    def seconds_silent(self) -> float:
        return asyncio.get_running_loop().time() - self.silent_since

    def send_probe(self) -> asyncio.Future[None]:
        self.num_probes += 1
        probe: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.answers:
            self.silent_since = asyncio.get_running_loop().time()  # the ack is a datagram
            probe.set_result(None)
        return probe

    def forget_probe(self, probe: asyncio.Future[None]) -> None:
        self.forgotten += 1
        probe.cancel()

    def declare_lost(self, reason: str) -> None:
        self.close_reason = reason


async def test_a_silent_peer_that_ignores_the_probe_is_declared_lost() -> None:
    conn = FakeConn(answers=False)
    await asyncio.wait_for(watch(conn, probe_after=0.05, timeout=0.05), 10)
    assert conn.close_reason is not None and "did not answer a ping" in conn.close_reason
    assert conn.num_probes == 1 and conn.forgotten == 1


async def test_a_peer_that_answers_is_kept_and_probed_again() -> None:
    conn = FakeConn(answers=True)
    task = asyncio.create_task(watch(conn, probe_after=0.02, timeout=0.05))
    while conn.num_probes < 3:
        await asyncio.sleep(0.01)
    assert conn.close_reason is None
    conn.close_reason = "closed by the app"
    await asyncio.wait_for(task, 10)


async def test_no_probe_without_requests_in_flight() -> None:
    conn = FakeConn(num_open=0, answers=False)
    task = asyncio.create_task(watch(conn, probe_after=0.01, timeout=0.01))
    await asyncio.sleep(0.1)
    assert conn.num_probes == 0 and conn.close_reason is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_closed_connection_ends_the_watch() -> None:
    conn = FakeConn(answers=False)
    probe: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    probe.set_exception(ConnectionError())
    conn.send_probe = lambda: probe  # type: ignore[method-assign]
    await asyncio.wait_for(watch(conn, probe_after=0.01, timeout=1.0), 10)
    assert conn.close_reason is None


async def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="probe_after"):
        await watch(FakeConn(), probe_after=0, timeout=1.0)
