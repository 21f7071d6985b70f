"""Start a real center (in-process gRPC server + engine) and a real edge node for e2e tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isthmus.edge.buffers import BufferLimits


@dataclass
class CenterHandle:
    server: Any
    service: Any
    engine: Any

    @property
    def port(self) -> int:
        return int(self.server.port)


@dataclass
class Harness:
    models: tuple[Path, Path]
    certs: tuple[str, str]
    tmp_path: Path
    api_key: str
    centers: list[CenterHandle] = field(default_factory=list)
    nodes: list[Any] = field(default_factory=list)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.nodes[-1].http_port}/metrics"

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop(grace_s=0.0)
        for center in self.centers:
            await center.server.stop(grace_s=0.0)
            await center.engine.stop()


async def start_center(h: Harness) -> CenterHandle:
    """A TP=1 center on an ephemeral loopback port, plaintext gRPC, ready (health SERVING)."""
    from isthmus.center.server import CenterServer
    from isthmus.center.service import CenterService
    from isthmus.engine.core.async_engine import AsyncEngine
    from isthmus.engine.core.options import EngineOptions

    engine = AsyncEngine(EngineOptions(model=str(h.models[1]), num_kv_blocks=64, max_num_seqs=8))
    await engine.start()
    service = CenterService(engine, engine.tokenizer, "tiny-center", max_model_len=engine.max_model_len)
    server = CenterServer(service, host="127.0.0.1", port=0)
    await server.start()
    await server.set_ready()
    handle = CenterHandle(server, service, engine)
    h.centers.append(handle)
    return handle


async def start_edge(
    h: Harness,
    *,
    center_ports: list[int],
    threshold: float = 0.35,
    confidence: tuple[int, float, int] | None = None,
    buffers: BufferLimits | None = None,
) -> Any:
    """An `EdgeNode` from a TOML config written for this test; fp32 tiny edge model."""
    from isthmus.edge.config import EdgeConfig
    from isthmus.edge.node import EdgeNode

    key_hash = hashlib.sha256(h.api_key.encode()).hexdigest()
    endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in center_ports)
    window, conf_threshold, max_checked = confidence or (16, 100.0, 64)
    buf = buffers or BufferLimits()
    toml = f"""
[model]
path = "{h.models[0]}"
name = "tiny-edge"
quantization = "none"

[engine]
num_kv_blocks = 64
max_num_seqs = 8

[listen]
host = "127.0.0.1"
port = 0
cert = "{h.certs[0]}"
key = "{h.certs[1]}"

[http]
host = "127.0.0.1"
port = 0

[auth]
allow_anonymous = false

[[auth.keys]]
name = "test"
sha256 = "{key_hash}"
max_concurrent = 8

[center]
endpoints = [{endpoints}]
health_interval_s = 0.2
health_timeout_s = 0.5

[router]
threshold = {threshold}

[confidence]
window = {window}
threshold = {conf_threshold}
max_checked_tokens = {max_checked}

[limits]
stream_high_watermark = {buf.stream_high}
stream_low_watermark = {buf.stream_low}
stream_hard_limit = {buf.stream_hard}
stall_timeout_s = {buf.stall_timeout_s}
"""
    path = h.tmp_path / f"edge{len(h.nodes)}.toml"
    path.write_text(toml)
    config = EdgeConfig.load(path)
    node = EdgeNode(config)
    await node.start()
    h.nodes.append(node)
    return node
