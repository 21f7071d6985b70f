"""`isthmus center swap`: the weight plan, the report, and the step order against fake edges."""

from __future__ import annotations

from typing import Any

import pytest
from isthmus.cli import swap
from isthmus.cli.swap import (
    CenterAccess,
    MigrationCounts,
    SwapError,
    SwapPlan,
    SwapReport,
    run_swap,
    summarize,
    weight_steps,
)

BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]


def test_weight_steps_hand_the_whole_weight_over() -> None:
    assert weight_steps(1.0, 4) == [(0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    assert weight_steps(2.0, 1) == [(0.0, 2.0)]
    with pytest.raises(ValueError, match="steps"):
        weight_steps(1.0, 0)


def _counts(finished: int, stall_max: float, counts: list[int]) -> MigrationCounts:
    return MigrationCounts(started=finished, finished=finished, stall_s_max=stall_max,
                           stall_counts=counts, stall_buckets=BUCKETS)


def test_longest_stall_exact_when_the_swap_raised_the_maximum_else_a_bucket_bound() -> None:
    before = _counts(2, 0.3, [0, 0, 0, 0, 0, 2, 2, 2, 2])
    raised = _counts(5, 0.6, [0, 0, 0, 2, 2, 4, 5, 5, 5]).since(before)
    assert raised.finished == 3 and raised.longest_stall() == (0.6, True)
    lower = _counts(5, 0.3, [0, 0, 3, 3, 3, 5, 5, 5, 5]).since(before)
    assert lower.longest_stall() == (0.05, False)
    assert MigrationCounts().longest_stall() is None


class FakeEdge:
    """An edge's admin API in memory: the pool and the calls made, in order."""

    def __init__(self, url: str, replicas: dict[str, float], log: list[Any]) -> None:
        self.url, self.log = url, log
        self.replicas = {e: {"endpoint": e, "weight": w, "healthy": True, "in_flight": 0}
                         for e, w in replicas.items()}
        self.stats = {"started": 0, "finished": 0, "failed": 0, "stall_s_max": 0.0,
                      "stall_buckets": BUCKETS, "stall_counts": [0] * len(BUCKETS)}
        self.polls_until_healthy = 2

    def pool(self) -> dict[str, Any]:
        for r in self.replicas.values():
            if not r["healthy"]:
                self.polls_until_healthy -= 1
                r["healthy"] = self.polls_until_healthy <= 0
        return {"replicas": [dict(r) for r in self.replicas.values()]}

    def change(self, action: str, endpoint: str, weight: float = 1.0) -> dict[str, Any]:
        self.log.append((self.url, action, endpoint, weight if action != "remove" else None))
        if action == "add":
            self.replicas[endpoint] = {"endpoint": endpoint, "weight": weight, "healthy": False,
                                       "in_flight": 0}
        elif action == "remove":
            del self.replicas[endpoint]
        else:
            self.replicas[endpoint]["weight"] = weight
        return self.pool()

    def migrations(self) -> MigrationCounts:
        return MigrationCounts.from_json(self.stats)


def _run(edges: list[FakeEdge], drain: Any, **plan: Any) -> SwapReport:
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    return run_swap(edges, SwapPlan("a:1", "b:2", ramp_s=4.0, steps=2, **plan), CenterAccess("t"),  # type: ignore[arg-type]
                    drain=drain, sleep=sleep, clock=lambda: clock[0])


def test_swap_adds_b_ramps_drains_a_then_removes_it_on_every_edge() -> None:
    log: list[Any] = []
    edges = [FakeEdge("e1", {"a:1": 1.0}, log), FakeEdge("e2", {"a:1": 1.0}, log)]
    edges[0].replicas["a:1"]["in_flight"] = 3

    def drain(address: str, access: CenterAccess, grace_s: float) -> int:
        log.append(("drain", address, access.token))
        for e in edges:  # the drained requests move: the edges count them, A empties
            e.replicas["a:1"]["in_flight"] = 0
        edges[0].stats.update(started=3, finished=3, stall_s_max=0.04, stall_counts=[0, 0, 3] + [3] * 6)
        return 3

    report = _run(edges, drain)
    assert log == [
        ("e1", "add", "b:2", 0.0), ("e2", "add", "b:2", 0.0),
        ("e1", "weight", "b:2", 0.5), ("e1", "weight", "a:1", 0.5),
        ("e2", "weight", "b:2", 0.5), ("e2", "weight", "a:1", 0.5),
        ("e1", "weight", "b:2", 1.0), ("e1", "weight", "a:1", 0.0),
        ("e2", "weight", "b:2", 1.0), ("e2", "weight", "a:1", 0.0),
        ("drain", "a:1", "t"),
        ("e1", "remove", "a:1", None), ("e2", "remove", "a:1", None),
    ]
    assert report.drained == 3 and report.migrations.finished == 3 and not report.still_in_flight
    text = summarize(report)
    assert "requests moved: 3 of 3 started; failed: 0" in text and "longest stall: 40.0 ms" in text


def test_unreachable_a_is_removed_without_a_drain() -> None:
    log: list[Any] = []
    edges = [FakeEdge("e1", {"a:1": 1.0, "b:2": 1.0}, log)]

    def drain(address: str, access: CenterAccess, grace_s: float) -> int:
        raise SwapError("Drain on a:1: UNAVAILABLE: connection refused")

    report = _run(edges, drain)
    assert ("e1", "add", "b:2", 0.0) not in log  # already in the pool
    assert log[-1] == ("e1", "remove", "a:1", None)
    assert report.drained is None and "drain of a:1 skipped" in summarize(report)


def test_requests_left_on_a_after_the_wait_are_reported() -> None:
    edges = [FakeEdge("e1", {"a:1": 1.0}, [])]
    edges[0].replicas["a:1"]["in_flight"] = 2
    report = _run(edges, lambda *_a: 2, settle_timeout_s=1.0)
    assert report.still_in_flight == 2 and "still in flight on a:1" in summarize(report)


def test_b_never_healthy_gives_up_naming_the_wait() -> None:
    edges = [FakeEdge("e1", {"a:1": 1.0}, [])]
    edges[0].polls_until_healthy = 10**9
    with pytest.raises(SwapError, match="b:2 to be healthy"):
        _run(edges, lambda *_a: 0, ready_timeout_s=2.0)


def test_a_not_in_the_pool_is_refused_before_any_change() -> None:
    log: list[Any] = []
    with pytest.raises(SwapError, match="a:1 is not in its pool"):
        _run([FakeEdge("e1", {"c:3": 1.0}, log)], lambda *_a: 0)
    assert log == []


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--from", "a:1", "--to", "b:2"],
                 ["--edge", "http://x", "--from", "a:1", "--to", "a:1"],
                 ["--edge", "http://x", "--from", "a:1", "--to", "b:2", "--ramp", "soon"],
                 ["--edge", "http://x", "--from", "a:1", "--to", "b:2", "--steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            swap.main(argv)
        assert exc.value.code == 2


def test_unreachable_edge_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ISTHMUS_ADMIN_TOKEN", "x" * 20)
    code = swap.main(["--edge", "http://127.0.0.1:9", "--from", "a:1", "--to", "b:2", "--timeout", "2"])
    assert code == 1 and "edge http://127.0.0.1:9" in capsys.readouterr().err


async def test_edge_admin_reads_migrations_from_a_real_admin_api() -> None:
    """`EdgeAdmin` against the edge's real admin routes (`GET /admin/migrations` needs the token)."""
    import asyncio
    import hashlib
    from types import SimpleNamespace

    from aiohttp import web
    from isthmus.edge.admin_api import admin_setup
    from isthmus.edge.migration import STATS

    token = "swap-test-admin-token-0123456789"
    node = SimpleNamespace(config=SimpleNamespace(admin=SimpleNamespace(
        token_sha256=hashlib.sha256(token.encode()).hexdigest())), audit=None)
    app = web.Application()
    admin_setup(node)(app)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"http://127.0.0.1:{port}"
        counts = await asyncio.to_thread(swap.EdgeAdmin(url, token).migrations)
        assert (counts.started, counts.finished) == (STATS.started, STATS.finished)
        assert counts.stall_buckets == BUCKETS and len(counts.stall_counts) == len(BUCKETS)
        with pytest.raises(SwapError, match="403"):
            await asyncio.to_thread(swap.EdgeAdmin(url, "wrong-token-0123456789").migrations)
    finally:
        await runner.cleanup()
