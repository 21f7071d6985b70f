"""One set of weights per center pool: the sans-IO `DigestGuard`, then `CenterPool` against fake
replicas on loopback gRPC reporting different `Status.weights_digest` values."""

from __future__ import annotations

import hashlib
import logging
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from isthmus.edge.admin_api import admin_setup, pool_view
from isthmus.edge.pool import CenterPool
from isthmus.edge.pool_digest import DigestGuard, WeightsMismatch
from isthmus.edge.replica import PoolOptions
from isthmus.protocol import Status, StatusRequest

from tests.edge.test_pool import FakeCenter, collect, request

pytestmark = pytest.mark.timeout(60)

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_first_seen_digest_is_established_and_others_are_mismatches() -> None:
    guard = DigestGuard()
    assert not guard.observe("r1", A).is_mismatch
    assert guard.pool_digest == A
    verdict = guard.observe("r2", B)
    assert verdict.is_mismatch and verdict.changed and verdict.pool_digest == A and verdict.digest == B
    assert not guard.observe("r2", B).changed  # logged once, not every health round
    assert guard.mismatched == ["r2"]
    # even when the newcomers outnumber it, the established digest stays while someone reports it
    assert guard.observe("r3", B).is_mismatch
    assert guard.pool_digest == A and guard.mismatched == ["r2", "r3"]


def test_empty_digest_is_never_judged_and_does_not_establish() -> None:
    guard = DigestGuard()
    assert not guard.observe("r1", "").is_mismatch
    assert not guard.observe("r2", None).is_mismatch
    assert guard.pool_digest == ""
    assert not guard.observe("r3", B).is_mismatch and guard.pool_digest == B
    assert not guard.observe("r1", "").is_mismatch


def test_the_digest_moves_when_no_replica_reports_it_any_more() -> None:
    guard = DigestGuard()
    guard.observe("old", A)
    guard.observe("n1", B)
    guard.observe("n2", C)
    guard.observe("n3", B)
    assert guard.mismatched == ["n1", "n2", "n3"]
    guard.forget("old")  # removed: the most reported digest takes over
    assert guard.pool_digest == B
    assert guard.mismatched == ["n2"]
    assert not guard.observe("n1", B).is_mismatch
    verdict = guard.observe("n2", C)
    assert verdict.is_mismatch and not verdict.changed


def test_a_replica_that_switches_weights_is_judged_again() -> None:
    guard = DigestGuard()
    guard.observe("r1", A)
    guard.observe("r2", A)
    assert guard.observe("r2", B).changed
    verdict = guard.observe("r2", A)  # rolled back to the pool's weights
    assert not verdict.is_mismatch and verdict.changed


def test_check_new_names_both_digests_and_disabled_guard_allows_all() -> None:
    guard = DigestGuard()
    guard.check_new("r0", B)  # nothing established yet
    guard.observe("r1", A)
    guard.check_new("r2", A)
    guard.check_new("r2", "")
    with pytest.raises(WeightsMismatch) as err:
        guard.check_new("r2", B)
    assert err.value.digest == B and err.value.pool_digest == A
    assert A in str(err.value) and B in str(err.value) and str(err.value).startswith("endpoint: r2")
    off = DigestGuard(enabled=False)
    off.observe("r1", A)
    assert not off.observe("r2", B).is_mismatch
    off.check_new("r3", C)


class DigestCenter(FakeCenter):
    """A fake replica that reports `digest` as its weights."""

    def __init__(self, name: str, digest: str) -> None:
        super().__init__(name)
        self.digest = digest

    async def status(self, req: StatusRequest, context: grpc.aio.ServicerContext) -> Status:
        return Status(tier="center", model=self.name, is_ready=True, weights_digest=self.digest)


async def start_pool(*centers: FakeCenter, **kw: Any) -> CenterPool:
    for c in centers:
        await c.start()
    pool = CenterPool([c.endpoint for c in centers], options=PoolOptions(health_interval_s=3600, **kw))
    await pool.start()
    return pool


async def test_mixed_digests_on_loopback_keep_the_stranger_out(caplog: pytest.LogCaptureFixture) -> None:
    a1, a2 = DigestCenter("a1", A), DigestCenter("a2", A)
    b1, b2 = DigestCenter("b1", B), DigestCenter("b2", B)
    caplog.set_level(logging.WARNING, logger="isthmus.edge.pool")
    pool = await start_pool(a1)
    try:
        await pool.check_all()
        assert pool.digests.pool_digest == A
        await b1.start()
        pool.add_replica(b1.endpoint)
        await a2.start()
        pool.add_replica(a2.endpoint)
        await pool.check_all()
        by_ep = {r.endpoint: r for r in pool.replicas}
        assert not by_ep[b1.endpoint].is_healthy and by_ep[a2.endpoint].is_healthy
        assert B in by_ep[b1.endpoint].last_error
        assert [m for m in caplog.messages if "kept out of rotation" in m and b1.endpoint in m]
        view = {v["endpoint"]: v for v in pool_view(pool)}
        assert view[b1.endpoint]["weights_mismatch"] and view[b1.endpoint]["weights_digest"] == B
        assert not view[a1.endpoint]["weights_mismatch"]
        for i in range(6):  # nothing is routed to the stranger
            msgs = await collect(pool, request())
            assert msgs[-1].model in ("a1", "a2"), i
        assert not b1.requests
        # an add of another stranger is refused before it joins; one with the pool's weights is not
        await b2.start()
        with pytest.raises(WeightsMismatch):
            await pool.check_joining(b2.endpoint)
        await pool.check_joining("127.0.0.1:1")  # unreachable: let through, health checks judge it
    finally:
        await pool.close()
        for c in (a1, a2, b1, b2):
            await c.stop()


async def test_at_start_the_first_replica_in_pool_order_sets_the_digest() -> None:
    b1, a1, a2 = DigestCenter("b1", B), DigestCenter("a1", A), DigestCenter("a2", A)
    pool = await start_pool(b1, a1, a2)  # polled concurrently, judged in this order
    try:
        assert pool.digests.pool_digest == B
        assert pool.digests.mismatched == sorted([a1.endpoint, a2.endpoint])
        assert [r.endpoint for r in pool.replicas if r.is_healthy] == [b1.endpoint]
        pool.remove_replica(b1.endpoint)  # nobody serves B any more: A takes over at the next round
        await pool.check_all()
        assert pool.digests.pool_digest == A and all(r.is_healthy for r in pool.replicas)
    finally:
        await pool.close()
        for c in (b1, a1, a2):
            await c.stop()


async def test_allow_mixed_weights_routes_to_every_replica() -> None:
    a1, b1 = DigestCenter("a1", A), DigestCenter("b1", B)
    pool = await start_pool(a1, b1, allow_mixed_weights=True)
    try:
        assert all(r.is_healthy for r in pool.replicas)
        await pool.check_joining(b1.endpoint)
    finally:
        await pool.close()
        await a1.stop()
        await b1.stop()


async def test_admin_add_of_a_stranger_is_refused_with_409_naming_the_digest() -> None:
    a1, a2, b1 = DigestCenter("a1", A), DigestCenter("a2", A), DigestCenter("b1", B)
    pool = await start_pool(a1)
    await a2.start()
    await b1.start()
    admin = SimpleNamespace(token_sha256=hashlib.sha256(b"tok").hexdigest())
    node = SimpleNamespace(config=SimpleNamespace(admin=admin), pool=pool, ab=None, audit=None)
    app = web.Application()
    admin_setup(node)(app)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        auth = {"Authorization": "Bearer tok"}
        resp = await client.post("/admin/pool", json={"action": "add", "endpoint": b1.endpoint}, headers=auth)
        body = await resp.json()
        assert resp.status == 409, body
        assert body["error"]["code"] == "weights_mismatch"
        assert body["error"]["digest"] == B and body["error"]["pool_digest"] == A
        assert [r.endpoint for r in pool.replicas] == [a1.endpoint]  # nothing changed
        resp = await client.post("/admin/pool", json={"action": "add", "endpoint": a2.endpoint}, headers=auth)
        assert resp.status == 200, await resp.text()
        assert {r["endpoint"] for r in (await resp.json())["replicas"]} == {a1.endpoint, a2.endpoint}
    finally:
        await client.close()
        await pool.close()
        for c in (a1, a2, b1):
            await c.stop()
