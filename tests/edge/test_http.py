"""HTTP side: /healthz, /readyz with checks, /metrics exposition, extra routes, real server."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from isthmus.edge.http import HttpServer, make_app
from isthmus.edge.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


async def client_for(app: web.Application) -> TestClient:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_healthz_and_metrics() -> None:
    metrics = Metrics()
    metrics.record_route("edge", "score_below_threshold")
    client = await client_for(make_app(metrics))
    try:
        resp = await client.get("/healthz")
        assert resp.status == 200 and (await resp.json())["alive"] is True
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
        assert 'isthmus_edge_requests_total{reason="score_below_threshold",tier="edge"} 1.0' in text
    finally:
        await client.close()


async def test_readyz_follows_checks() -> None:
    state = {"model": False, "center": True}

    def broken() -> bool:
        raise RuntimeError("boom")

    checks = {"model": lambda: state["model"], "center": lambda: state["center"]}
    client = await client_for(make_app(Metrics(), checks=checks))
    try:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"] == {"model": False, "center": True}
        state["model"] = True
        resp = await client.get("/readyz")
        assert resp.status == 200 and (await resp.json())["ready"] is True
    finally:
        await client.close()
    client = await client_for(make_app(Metrics(), checks={"x": broken}))
    try:
        assert (await client.get("/readyz")).status == 503
    finally:
        await client.close()


async def test_setup_hook_adds_routes() -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    def mount(app: web.Application) -> None:
        app.router.add_get("/v1/models", models)

    client = await client_for(make_app(Metrics(), setup=[mount]))
    try:
        assert (await (await client.get("/v1/models")).json()) == {"data": []}
        assert (await client.get("/nope")).status == 404
    finally:
        await client.close()


async def test_http_server_on_an_ephemeral_port() -> None:
    server = HttpServer(make_app(Metrics()), "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
                assert resp.status == 200
    finally:
        await server.stop()


async def test_node_like_source_and_scrape_hook() -> None:
    class Node:
        def __init__(self) -> None:
            self.metrics = Metrics()
            self.num_scrapes = 0

        def ready_checks(self) -> dict[str, object]:
            return {"model": lambda: True}

        def update_gauges(self) -> None:
            self.num_scrapes += 1
            self.metrics.set_load(7, 1, 0, 0)

    node = Node()
    client = await client_for(make_app(node))
    try:
        assert "isthmus_edge_queue_depth 7.0" in await (await client.get("/metrics")).text()
        assert node.num_scrapes == 1
        assert (await (await client.get("/readyz")).json())["checks"] == {"model": True}
    finally:
        await client.close()


async def test_metrics_need_a_configured_key_and_wrong_keys_are_throttled() -> None:
    from isthmus.edge.auth import ApiKey, ApiKeyStore, hash_key

    class Node:
        def __init__(self) -> None:
            self.metrics = Metrics()
            self.auth: ApiKeyStore | None = None  # set at start, as EdgeNode does

    node = Node()
    client = await client_for(make_app(node))
    try:
        assert (await client.get("/metrics")).status == 200  # no store: open
        node.auth = ApiKeyStore()  # no keys, anonymous allowed: open
        assert (await client.get("/metrics")).status == 200
        node.auth = ApiKeyStore([ApiKey(hash_key("sk-metrics"), "prom")])
        resp = await client.get("/metrics")
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthenticated"
        ok = await client.get("/metrics", headers={"Authorization": "Bearer sk-metrics"})
        assert ok.status == 200 and "isthmus_edge" in await ok.text()
        statuses = [
            (await client.get("/metrics", headers={"Authorization": "Bearer bad"})).status for _ in range(30)
        ]
        assert statuses[0] == 401 and statuses[-1] == 429
        resp = await client.get("/metrics", headers={"Authorization": "Bearer bad"})
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()
