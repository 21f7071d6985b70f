"""The SDK against a real `EdgeNode` (tiny random checkpoint, no center): streaming, route,
typed auth errors, cancellation freeing the engine, 0-RTT resumption and connection migration."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from isthmus.client import MemoryTicketStore, Unauthenticated, connect
from isthmus.edge.config import EdgeConfig
from isthmus.edge.node import EdgeNode
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

from .certs import Certs

pytestmark = pytest.mark.timeout(120)
API_KEY = "sk-test-client"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("client_edge_model"), "llama", seed=5)


@pytest.fixture
async def node(tmp_path: Path, model: Path, certs: Certs) -> AsyncIterator[EdgeNode]:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[model]
path = "{model}"

[engine]
num_kv_blocks = 32
max_num_seqs = 4

[listen]
host = "127.0.0.1"
port = 0
cert = "{certs.cert}"
key = "{certs.key}"

[http]
enabled = false

[[auth.keys]]
sha256 = "{digest}"
name = "test"
"""
    )
    edge = EdgeNode(EdgeConfig.load(path))
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop(grace_s=0.0)


async def test_complete_and_stream_from_a_real_edge(node: EdgeNode, certs: Certs) -> None:
    address = f"127.0.0.1:{node.quic_port}"
    async with connect(address, ca=certs.ca, api_key=API_KEY) as client:
        answer = await client.complete("Hello", max_tokens=5, temperature=0.0, ignore_eos=True, tier="edge")
        chunks = [
            c
            async for c in client.generate(
                [{"role": "user", "content": "Hi"}], max_tokens=3, ignore_eos=True, tier="edge"
            )
        ]
    assert len(answer.token_ids) == 5 and answer.finish_reason == "length"
    assert answer.route.tier == "edge" and answer.route.reason
    assert answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens > 0
    assert answer.timings.total_ms >= answer.timings.first_token_ms >= 0.0
    assert sum(len(c.token_ids) for c in chunks) == 3 and all(c.tier == "edge" for c in chunks)


async def test_wrong_key_is_unauthenticated(node: EdgeNode, certs: Certs) -> None:
    async with connect(f"127.0.0.1:{node.quic_port}", ca=certs.ca, api_key="nope") as client:
        with pytest.raises(Unauthenticated):
            await client.complete("Hello", max_tokens=2)


async def test_break_frees_the_edge_and_resumption_uses_0rtt(node: EdgeNode, certs: Certs) -> None:
    address = f"127.0.0.1:{node.quic_port}"
    store = MemoryTicketStore()
    async with connect(address, ca=certs.ca, api_key=API_KEY, ticket_store=store) as client:
        async for _chunk in client.generate("Hello", max_tokens=2000, ignore_eos=True, tier="edge"):
            break
        assert node.quic is not None
        for _ in range(500):  # the edge sees the reset and drops the request
            if node.quic.num_active_streams == 0:
                break
            await asyncio.sleep(0.01)
        assert node.quic.num_active_streams == 0
    async with connect(address, ca=certs.ca, api_key=API_KEY, ticket_store=store) as client:
        answer = await client.complete("Hello", max_tokens=2, ignore_eos=True, tier="edge")
        info = client.connection_info
        assert info is not None and info.is_resumed and info.is_early_data_accepted
    assert len(answer.token_ids) == 2


async def test_migration_mid_stream_against_a_real_edge(node: EdgeNode, certs: Certs) -> None:
    async with connect(f"127.0.0.1:{node.quic_port}", ca=certs.ca, api_key=API_KEY) as client:
        num_tokens, moved = 0, False
        async for chunk in client.generate("Hello", max_tokens=40, ignore_eos=True, tier="edge"):
            num_tokens += len(chunk.token_ids)
            if not moved and num_tokens >= 2:
                old = client.connection_info
                new_port = await client.rebind()
                assert old is not None and new_port != old.local_port
                moved = True
    assert moved and num_tokens == 40
