"""EdgeNode and `python -m isthmus.edge.main`: config checks, start, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from isthmus.cli.network import free_port
from isthmus.edge.config import EdgeConfig
from isthmus.edge.main import main
from isthmus.edge.node import EdgeNode
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import Done, Error, ErrorCode, GenerateRequest, SamplingOptions, TokenChunk

from .quic_helpers import final, raw_client, write_self_signed

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("edge_model"), "llama", seed=21)


def write_config(folder: Path, model: Path, port: int = 0, extra: str = "") -> Path:
    cert, key = write_self_signed(folder)
    path = folder / "edge.toml"
    path.write_text(
        f"""
[model]
path = "{model}"

[engine]
num_kv_blocks = 32
max_num_seqs = 4

[listen]
host = "127.0.0.1"
port = {port}
cert = "{cert}"
key = "{key}"

[http]
enabled = false
{extra}
"""
    )
    return path


def request(id: str, max_tokens: int) -> GenerateRequest:
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return GenerateRequest(id=id, prompt="Hello", sampling=sampling, tier="edge")


def test_check_config_accepts_a_valid_file(tmp_path: Path, model: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_config(tmp_path, model)
    assert main(["--config", str(path), "--check-config"]) == 0
    assert "valid" in capsys.readouterr().out


def test_check_config_names_the_bad_field(tmp_path: Path, model: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_config(tmp_path, model, extra="[limits]\nmax_connections = -1\n")
    assert main(["--config", str(path), "--check-config"]) == 2
    assert "limits.max_connections" in capsys.readouterr().err


async def test_node_serves_and_drains_in_flight_requests(tmp_path: Path, model: Path) -> None:
    node = EdgeNode(EdgeConfig.load(write_config(tmp_path, model)))
    await node.start()
    try:
        assert node.orchestrator is not None  # what the HTTP API mounts its routes on
        async with raw_client(node.quic_port) as client:
            msgs = await client.request(request("one", 4))
            assert [type(m) for m in msgs] == [TokenChunk] * 4 + [Done]
            long = client.send_message(request("long", 2000))
            await client.first_message(long)
            await node.stop(grace_s=0.2)
            last = final(await client.wait_end(long))
            assert isinstance(last, Error) and last.code == ErrorCode.DRAINING
    finally:
        await node.stop(grace_s=0.0)
    assert not node.engine.is_running


async def test_main_serves_then_exits_0_on_sigterm(tmp_path: Path, model: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    path = write_config(tmp_path, model, port=port)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "isthmus.edge.main", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
            lines.append(line)
            if "edge ready" in line or not line:
                break
        assert any("edge ready" in line for line in lines), "".join(lines)
        async with raw_client(port) as client:
            assert isinstance(final(await client.request(request("sub", 3))), Done)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
