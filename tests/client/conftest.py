"""Fixtures for the SDK tests: TLS material and fake edges on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from .certs import Certs, make_certs
from .fake_edge import FakeEdge


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Certificates from a CA the client does not trust (a failing handshake)."""
    return make_certs(Path(tmp_path_factory.mktemp("other-certs")), label="other")


@pytest.fixture
async def make_edge(certs: Certs) -> AsyncIterator[Callable[..., Awaitable[FakeEdge]]]:
    edges: list[FakeEdge] = []

    async def make(certs_: Certs | None = None, **kwargs: Any) -> FakeEdge:
        c = certs_ or certs
        edge = await FakeEdge(c.cert, c.key, **kwargs).start()
        edges.append(edge)
        return edge

    yield make
    for edge in edges:
        edge.close()


@pytest.fixture
async def edge(make_edge: Callable[..., Awaitable[FakeEdge]]) -> FakeEdge:
    return await make_edge()
