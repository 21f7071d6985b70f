"""IP allowlists per listener: CIDR matching, and real QUIC and HTTP listeners on loopback that
refuse an address outside the list before any request reaches the model, and admit one inside."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from isthmus.edge.allowlist import Allowlist
from isthmus.edge.config import ConfigError, EdgeConfig
from isthmus.edge.http import HttpServer, make_app
from isthmus.edge.metrics import Metrics
from isthmus.edge.quic_server import EdgeQuicServer
from isthmus.protocol import Done, GenerateRequest, Route, SamplingOptions, TokenChunk

from .quic_helpers import final, raw_client, write_self_signed

pytestmark = pytest.mark.timeout(90)


def test_cidrs_match_v4_v6_and_mapped_addresses() -> None:
    allow = Allowlist(["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"])
    for ok in ["10.1.2.3", "127.0.0.1", "::ffff:10.9.9.9", "2001:db8::1", "2001:db8::1%eth0"]:
        assert allow.allows(ok), ok
    for bad in ["11.0.0.1", "127.0.0.2", "2001:db9::1", "", "not-an-address", "::1"]:
        assert not allow.allows(bad), bad
    assert allow.num_refused == 6
    assert Allowlist([]).allows("203.0.113.9") and Allowlist([]).is_open


def test_a_bad_cidr_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"allow\[1\]"):
        Allowlist(["10.0.0.0/8", "10.0.0.0/33"])
    base = {"model": {"path": "/m"}}
    with pytest.raises(ConfigError, match=r"listen\.allow\[0\]"):
        EdgeConfig.from_dict({**base, "listen": {"allow": ["nope"]}})
    with pytest.raises(ConfigError, match=r"http\.allow\[0\]"):
        EdgeConfig.from_dict({**base, "http": {"allow": ["1.2.3.4/99"]}})
    cfg = EdgeConfig.from_dict({**base, "listen": {"allow": ["127.0.0.0/8"]}, "http": {"allow": ["::1/128"]}})
    assert cfg.listen.allow == ["127.0.0.0/8"] and cfg.http.allow == ["::1/128"]


class CountingHandler:
    """Stands in for the model: counts every request that reaches it."""

    def __init__(self) -> None:
        self.num_calls = 0

    async def __call__(self, req: GenerateRequest) -> AsyncIterator[TokenChunk | Done]:
        self.num_calls += 1
        yield TokenChunk(id=req.id, text="ok", tier="edge")
        yield Done(id=req.id, finish_reason="stop", route=Route(tier="edge", reason="wish_edge"))


def request() -> GenerateRequest:
    return GenerateRequest(id="r", prompt="hi", sampling=SamplingOptions(max_tokens=1))


@pytest.mark.parametrize("cidrs", [["10.0.0.0/8"], ["192.0.2.0/24", "::1/128"]])
async def test_quic_refuses_an_address_outside_the_list_before_any_request(
    tmp_path: Path, cidrs: list[str]
) -> None:
    cert, key = write_self_signed(tmp_path)
    handler = CountingHandler()
    allow = Allowlist(cidrs)
    server = EdgeQuicServer(handler, certfile=cert, keyfile=key, allowlist=allow)
    await server.start()
    try:
        async with raw_client(server.port) as client:
            client.send_message(request())
            await asyncio.wait_for(client.wait_closed(), 10)
        assert handler.num_calls == 0 and allow.num_refused == 1
        assert server.num_connections == 0
        server.allowlist = Allowlist(["127.0.0.0/8"])  # one that includes the client admits it
        async with raw_client(server.port) as client:
            assert isinstance(final(await client.request(request())), Done)
        assert handler.num_calls == 1
    finally:
        await server.close()


class FakeNode:
    def __init__(self, allow: Allowlist) -> None:
        self.metrics = Metrics()
        self.http_allowlist = allow
        self.num_calls = 0


async def test_http_refuses_an_address_outside_the_list_before_any_handler() -> None:
    node = FakeNode(Allowlist(["10.0.0.0/8"]))

    async def work(request: web.Request) -> web.Response:
        node.num_calls += 1
        return web.json_response({"ok": True})

    app = make_app(node, checks={}, setup=[lambda app: app.router.add_post("/v1/work", work)])
    server = HttpServer(app)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in [("POST", "/v1/work"), ("GET", "/metrics"), ("GET", "/healthz")]:
                async with http.request(method, base + path, json={"prompt": "x"}) as r:
                    assert r.status == 403, path
                    assert (await r.json())["error"]["code"] == "forbidden"
            assert node.num_calls == 0
            node.http_allowlist = Allowlist(["127.0.0.1/32"])
            async with http.post(base + "/v1/work", json={}) as r:
                assert r.status == 200
            assert node.num_calls == 1
    finally:
        await server.stop()


async def test_edge_node_applies_each_listeners_allowlist(tmp_path: Path) -> None:
    from isthmus.edge.node import EdgeNode
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "model", "llama", seed=3)
    cert, key = write_self_signed(tmp_path)
    path = tmp_path / "edge.toml"
    path.write_text(
        f'[model]\npath = "{model}"\n[engine]\nnum_kv_blocks = 32\nmax_num_seqs = 2\n'
        f'[listen]\nhost = "127.0.0.1"\nport = 0\ncert = "{cert}"\nkey = "{key}"\nallow = ["10.0.0.0/8"]\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\nallow = ["192.0.2.0/24"]\n'
    )
    node = EdgeNode(EdgeConfig.load(path))
    await node.start()
    try:
        assert node.quic is not None
        async with raw_client(node.quic_port) as client:
            client.send_message(request())
            await asyncio.wait_for(client.wait_closed(), 10)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{node.http_port}/v1/completions"
            async with http.post(url, json={"model": "m", "prompt": "hi", "max_tokens": 1}) as r:
                assert r.status == 403
        assert node.quic.allowlist is not None and node.quic.allowlist.num_refused == 1
        assert node.http_allowlist.num_refused == 1
        # nothing was tokenized, routed or answered
        assert node.metrics.registry.get_sample_value("isthmus_edge_tokens_in_total") == 0.0
        assert node.metrics.registry.get_sample_value("isthmus_edge_tokens_out_total") == 0.0
        node.quic.allowlist = Allowlist(["127.0.0.1/32"])  # a list that includes the client admits it
        async with raw_client(node.quic_port) as client:
            assert isinstance(final(await client.request(request())), Done)
        assert (node.metrics.registry.get_sample_value("isthmus_edge_tokens_in_total") or 0.0) > 0.0
    finally:
        await node.stop(grace_s=0.0)
