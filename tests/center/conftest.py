"""Center fixtures: tiny checkpoints whose head counts suit TP=2, and a free-port helper."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from isthmus.cli.network import free_port as free_port  # re-exported for the tests here
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tp_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GQA LLaMA: 4 query heads, 2 KV heads -> TP=2 splits the KV heads (one per rank)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tp_llama"), "llama", seed=1)


@pytest.fixture(scope="session")
def tp_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 (qkv bias, tied embeddings) with ONE KV head -> TP=2 replicates it on both ranks."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tp_qwen2"), "qwen2", seed=5, num_kv_heads=1)


def engine_options(model: Path) -> Any:
    from isthmus.engine.core.options import EngineOptions

    return EngineOptions(model=str(model), dtype="float32", device="cpu", num_kv_blocks=48, block_size=16,
                         max_num_seqs=8, max_num_batched_tokens=256)


@dataclass
class Center:
    """A TP=1 center served over loopback gRPC in the test's event loop."""

    engine: Any
    service: Any
    server: Any
    channel: Any

    def generate_call(self, req: Any, timeout: float | None = None) -> Any:
        from isthmus.protocol import decode, encode, rpc

        stub = self.channel.unary_stream(
            rpc.GENERATE, request_serializer=encode, response_deserializer=decode
        )
        return stub(req, timeout=timeout)

    async def generate(self, req: Any, timeout: float | None = None) -> list[Any]:
        return [msg async for msg in self.generate_call(req, timeout)]

    async def unary(self, path: str, req: Any, metadata: Any = None) -> Any:
        from isthmus.protocol import decode, encode

        stub = self.channel.unary_unary(path, request_serializer=encode, response_deserializer=decode)
        return await stub(req, metadata=metadata)


@contextlib.asynccontextmanager
async def running_center(model: Path, *, ready: bool = True, tls: Any = None,
                         channel_credentials: Any = None, admin: Any = None) -> AsyncIterator[Center]:
    import grpc
    from isthmus.center.server import CenterServer
    from isthmus.center.service import CenterService
    from isthmus.engine.core.async_engine import AsyncEngine

    engine = AsyncEngine(engine_options(model))
    await engine.start()
    service = CenterService(engine, engine.tokenizer, engine.model_name, max_model_len=engine.max_model_len)
    server = CenterServer(service, host="127.0.0.1", port=0, tls=tls, default_grace_s=5.0, admin=admin)
    port = await server.start()
    if ready:
        await server.set_ready()
    if channel_credentials is None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    else:
        channel = grpc.aio.secure_channel(f"localhost:{port}", channel_credentials)
    try:
        yield Center(engine, service, server, channel)
    finally:
        await channel.close()
        await server.stop()
        service.close()
        await engine.stop()


ADMIN_TOKEN = "test-admin-token-0123456789"  # the `center` fixture's admin token


@pytest.fixture
async def center(tp_llama: Path) -> AsyncIterator[Center]:
    from isthmus.center.auth import AdminPolicy

    async with running_center(tp_llama, admin=AdminPolicy(token=ADMIN_TOKEN)) as c:
        yield c
