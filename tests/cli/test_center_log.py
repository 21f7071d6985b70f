"""`isthmus up` appends to center.log: the traceback of a crashed run survives the restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from isthmus.cli import network
from isthmus.cli.network import LocalNetwork, NetworkSettings


class FakeCenter:
    """Stands in for the launch script's process: writes one line to the log it was given."""

    def __init__(self, cmd: list[str], stdout: Any, **kwargs: Any) -> None:
        stdout.write(b"center output of this run\n")
        self.pid = 0
        self.returncode = 0

    def poll(self) -> int:
        return 0


def test_center_log_is_appended_across_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network.subprocess, "Popen", FakeCenter)

    async def serving(self: LocalNetwork) -> None:
        return None

    monkeypatch.setattr(LocalNetwork, "_wait_center_serving", serving)
    (tmp_path / "center.log").write_text("Traceback (most recent call last): the crash before\n")
    net = LocalNetwork(NetworkSettings(cache_dir=tmp_path, center_port=50999), progress=lambda _: None)
    for _ in range(2):
        asyncio.run(net._start_center(tmp_path))
    text = (tmp_path / "center.log").read_text()
    assert text.startswith("Traceback (most recent call last): the crash before\n")
    assert text.count("=== isthmus up: starting the center") == 2
    assert text.count("center output of this run") == 2
