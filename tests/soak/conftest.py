"""Fixtures of the reliability suite: tiny checkpoints, their reference answers, TLS material, a
running edge + center, and `record()` for each test's figures.

Short variants run by default (CI); ``ISTHMUS_SOAK_LONG=1`` selects the long ones (10-minute
soak, 1M fuzzed frames, 50k frames over QUIC). Figures are printed (run with ``-s``) and written
as JSON under ``ISTHMUS_SOAK_RESULTS`` (default ``bench/reliability/results``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.edge.quic_helpers import write_self_signed

from .load import MAX_TOKENS, PROMPTS, References, reference_ids
from .mode import API_KEY, IS_LONG, pick
from .procs import REPO, Proc, edge_toml, spawn_center, spawn_edge, start_all

__all__ = ["API_KEY", "IS_LONG", "Network", "pick", "record"]
RESULTS = Path(os.environ.get("ISTHMUS_SOAK_RESULTS", REPO / "bench" / "reliability" / "results"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: reliability suite (load, faults, fuzz, floods)")


def record(name: str, figures: dict[str, Any]) -> None:
    """Print one test's figures and keep them as `<results>/<name>.json`."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    figures = {"test": name, "long": IS_LONG, "cpus": os.cpu_count(), "at": at, **figures}
    text = json.dumps(figures, indent=1, default=str)
    print(f"\n[soak] {name}: {text}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}{'-long' if IS_LONG else ''}.json").write_text(text + "\n")


@pytest.fixture(scope="session")
def soak_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="session")
def models(soak_dir: Path) -> tuple[Path, Path]:
    """(edge, center) tiny fp32 checkpoints of different seeds: answers tell the tiers apart."""
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    return (
        make_tiny_checkpoint(soak_dir / "edge-model", "llama", seed=21),
        make_tiny_checkpoint(soak_dir / "center-model", "llama", seed=22),
    )


@pytest.fixture(scope="session")
def refs(models: tuple[Path, Path]) -> References:
    """Greedy reference answers of every prompt on both checkpoints (direct engine runs)."""

    async def both() -> References:
        edge = await reference_ids(str(models[0]), PROMPTS, MAX_TOKENS)
        center = await reference_ids(str(models[1]), PROMPTS, MAX_TOKENS)
        ids = {("edge", i): e for i, e in enumerate(edge)} | {("center", i): c for i, c in enumerate(center)}
        return References(ids)

    return asyncio.run(both())


@pytest.fixture(scope="session")
def certs(soak_dir: Path) -> tuple[str, str]:
    folder = soak_dir / "certs"
    folder.mkdir(exist_ok=True)
    return write_self_signed(folder)


class Network:
    """Started processes by name; every one is SIGKILLed at teardown (none outlives the test)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, Proc] = {}

    def add(self, *procs: Proc) -> None:
        for p in procs:
            self.procs[p.name] = p

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    def close(self) -> None:
        for p in self.procs.values():
            p.kill()


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    net = Network(tmp_path)
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="session")
def shared_net(soak_dir: Path, models: tuple[Path, Path], certs: tuple[str, str]) -> Iterator[Network]:
    """One center and one edge, shared by the soak and the floods (started once)."""
    net = Network(soak_dir)
    try:
        center = spawn_center(soak_dir, models[1], "center-shared")
        net.add(*start_all([center]))
        edge = spawn_edge(soak_dir, "edge-shared", edge_toml(models[0], certs, API_KEY, [center.address]))
        net.add(*start_all([edge]))
        yield net
    finally:
        net.close()
