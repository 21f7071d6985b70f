"""Live migration end to end: an app's stream over real QUIC keeps going when the center replica
answering it drains with ``migrate=true`` (real gRPC, two in-process tiny centers, one EdgeNode)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from isthmus.client import connect
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

from tests.edge.quic_helpers import write_self_signed

from .edge_harness import Harness, start_center, start_edge

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

API_KEY = "test-key-1"
PROMPT = "Prove that sqrt(2) is irrational, step by step."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    edge = make_tiny_checkpoint(root / "edge", "llama", seed=11)
    return edge, make_tiny_checkpoint(root / "center", "llama", seed=12)


@pytest.fixture
async def harness(models: tuple[Path, Path], tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(models=models, certs=write_self_signed(tmp_path), tmp_path=tmp_path, api_key=API_KEY)
    try:
        yield h
    finally:
        await h.close()


def _ids(chunks: list[Any]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.9, "seed": 21}],
                         ids=["greedy", "seeded"])
async def test_stream_survives_a_migrating_drain(harness: Harness, sampling: dict[str, Any]) -> None:
    a, b = await start_center(harness), await start_center(harness)
    node = await start_edge(harness, center_ports=[a.port, b.port], threshold=0.0)
    opts = {"max_tokens": 40, "ignore_eos": True, **sampling}
    async with connect(node.quic_address, api_key=API_KEY, verify=False) as client:
        expected = [c async for c in client.generate(PROMPT, **opts)]
        chunks: list[Any] = []
        drained = None
        async for chunk in client.generate(PROMPT, **opts):
            chunks.append(chunk)
            if drained is None and len(_ids(chunks)) >= 4:
                drained = next(c for c in (a, b) if c.service.in_flight)
                assert await drained.server.drain(grace_s=5.0, migrate=True) == 1
    assert drained is not None
    assert all(c.tier == "center" for c in chunks)
    assert _ids(chunks) == _ids(expected) and len(_ids(chunks)) == 40
    assert "".join(c.text for c in chunks) == "".join(c.text for c in expected)
    # the drained replica stopped serving: the rest of the answer came from the other one
    await asyncio.wait_for(drained.server.wait_stopped(), timeout=10)
    assert not drained.service.in_flight
    text = node.metrics.render().decode()
    name = 'isthmus_edge_migrations_total{outcome="finished"}'
    finished = [line for line in text.splitlines() if line.startswith(name)]
    assert finished and float(finished[0].rpartition(" ")[2]) >= 1
