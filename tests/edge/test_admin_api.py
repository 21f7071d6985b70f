"""Admin API and config hot reload on a real edge node on loopback (QUIC + HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from isthmus.cli.network import free_port
from isthmus.edge.auth import hash_key
from isthmus.edge.config import EdgeConfig
from isthmus.edge.node import EdgeNode
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import Done, Error, ErrorCode, GenerateRequest, SamplingOptions, TokenChunk

from .quic_helpers import final, raw_client, write_self_signed

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin-token-1"
KEYS = {"alice": "key-alice-1", "bob": "key-bob-1", "carol": "key-carol-1"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("admin_model"), "llama", seed=5)


def write_config(
    folder: Path, model: Path, *, threshold: float, keys: list[str], extra: str = "", limit: int = 32
) -> Path:
    cert, key = write_self_signed(folder)
    key_tables = "".join(
        f'[[auth.keys]]\nname = "{n}"\nsha256 = "{hash_key(KEYS[n])}"\nmax_concurrent = {limit}\n\n'
        for n in keys
    )
    path = folder / "edge.toml"
    path.write_text(
        f"""
[model]
path = "{model}"

[engine]
num_kv_blocks = 256
max_num_seqs = 24

[listen]
host = "127.0.0.1"
port = 0
cert = "{cert}"
key = "{key}"

[http]
host = "127.0.0.1"
port = 0

[router]
model = "heuristic"
threshold = {threshold}

[admin]
token_sha256 = "{hash_key(ADMIN)}"

[audit]
path = "{folder / "audit.log"}"

{key_tables}{extra}
"""
    )
    return path


def request(id: str, key: str, max_tokens: int = 4, tier: str = "auto") -> GenerateRequest:
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return GenerateRequest(id=id, prompt="Hello there", sampling=sampling, tier=tier, api_key=key)  # type: ignore[arg-type]


async def admin(
    node: EdgeNode, method: str, path: str, token: str | None = ADMIN, body: object = None
) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{node.http_port}{path}", headers=headers, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def ready(node: EdgeNode) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{node.http_port}/readyz") as r:
        return r.status == 200


@pytest.fixture
async def node(tmp_path: Path, model: Path):  # type: ignore[no-untyped-def]
    n = EdgeNode(EdgeConfig.load(write_config(tmp_path, model, threshold=100.0, keys=["alice", "bob"])))
    await n.start()
    try:
        yield n
    finally:
        await n.stop(grace_s=0.0)


async def test_reload_under_20_streams_drops_none_and_applies_to_new_requests(
    node: EdgeNode, tmp_path: Path, model: Path
) -> None:
    async with raw_client(node.quic_port) as client:
        before = final(await client.request(request("before", KEYS["alice"])))
        assert isinstance(before, Done) and before.route.reason == "score_below_threshold"
        streams = [client.send_message(request(f"s{i}", KEYS["bob"], max_tokens=48)) for i in range(20)]
        for sid in streams:  # every stream is answering when the reload lands
            assert isinstance(await client.first_message(sid), TokenChunk)
        write_config(tmp_path, model, threshold=0.0, keys=["alice", "carol"])  # bob revoked, carol new
        status, body = await admin(node, "POST", "/admin/reload")
        assert status == 200, body
        assert {c["field"] for c in body["changes"]} == {"router.threshold", "auth.keys"}
        ends = [final(await client.wait_end(sid)) for sid in streams]
        assert all(isinstance(m, Done) for m in ends), ends  # none dropped, bob's included
        assert sum(m.usage.completion_tokens for m in ends) == 20 * 48  # type: ignore[union-attr]
        revoked = final(await client.request(request("bob-again", KEYS["bob"])))
        assert isinstance(revoked, Error) and revoked.code == ErrorCode.UNAUTHENTICATED
        added = final(await client.request(request("carol", KEYS["carol"])))
        assert isinstance(added, Done)
        after = final(await client.request(request("after", KEYS["alice"])))
        assert isinstance(after, Done) and after.route.reason != "score_below_threshold"
    assert node.router.base_threshold == 0.0
    assert await ready(node)
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    reloads = [x for x in lines if x["action"] == "config.reload"]
    assert len(reloads) == 1 and reloads[0]["outcome"] == "ok" and reloads[0]["actor"] == "admin"
    text = (tmp_path / "audit.log").read_text()
    assert ADMIN not in text and hash_key(KEYS["carol"]) not in text and "Hello there" not in text


async def test_invalid_reload_is_refused_by_field_and_changes_nothing(
    node: EdgeNode, tmp_path: Path, model: Path
) -> None:
    path = write_config(
        tmp_path, model, threshold=0.5, keys=["alice"], extra="[limits]\nmax_connections = -1\n"
    )
    status, body = await admin(node, "POST", "/admin/reload")
    assert status == 400 and "limits.max_connections" in body["error"]["errors"][0]
    text = (
        path.read_text()
        .replace("[limits]\nmax_connections = -1\n", "")
        .replace("port = 0\ncert", "port = 4999\ncert")
    )
    path.write_text(text)
    status, body = await admin(node, "POST", "/admin/reload")
    assert status == 400 and body["error"]["errors"][0].startswith("listen.port:")
    assert node.router.base_threshold == 100.0 and await ready(node)
    async with raw_client(node.quic_port) as client:  # bob was not revoked: nothing applied
        assert isinstance(final(await client.request(request("bob", KEYS["bob"]))), Done)
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [x["outcome"] for x in lines if x["action"] == "config.reload"] == ["refused", "refused"]


async def test_admin_token_is_required_and_wrong_ones_change_nothing(
    node: EdgeNode, tmp_path: Path, model: Path
) -> None:
    write_config(tmp_path, model, threshold=0.0, keys=["alice"])
    assert (await admin(node, "POST", "/admin/reload", token=None))[0] == 401
    status, body = await admin(node, "POST", "/admin/reload", token=KEYS["alice"])  # an API key is not admin
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert node.router.base_threshold == 100.0
    text = (tmp_path / "audit.log").read_text()
    assert text.count('"auth.refused"') == 2 and KEYS["alice"] not in text


async def test_pool_add_weight_remove_and_bad_arguments(node: EdgeNode, tmp_path: Path) -> None:
    status, body = await admin(node, "POST", "/admin/pool", body={"action": "add", "endpoint": "127.0.0.1:1"})
    assert status == 200 and body["replicas"][0]["endpoint"] == "127.0.0.1:1"
    status, body = await admin(
        node, "POST", "/admin/pool", body={"action": "weight", "endpoint": "127.0.0.1:1", "weight": 0}
    )
    assert status == 200 and body["replicas"][0]["weight"] == 0.0
    for bad, field in [
        ({"action": "grow", "endpoint": "127.0.0.1:1"}, "action"),
        ({"action": "add", "endpoint": "nope"}, "endpoint"),
        ({"action": "weight", "endpoint": "127.0.0.1:1", "weight": -1}, "weight"),
        ({"action": "add", "endpoint": "127.0.0.1:1"}, "endpoint"),  # already there
        ({"action": "remove", "endpoint": "127.0.0.1:2"}, "endpoint"),  # not there
    ]:
        status, body = await admin(node, "POST", "/admin/pool", body=bad)
        assert status == 400 and body["error"]["field"] == field, (bad, body)
    status, body = await admin(
        node, "POST", "/admin/pool", body={"action": "remove", "endpoint": "127.0.0.1:1"}
    )
    assert status == 200 and body["replicas"] == []
    assert (await admin(node, "GET", "/admin/pool"))[1] == {"replicas": []}
    actions = [json.loads(x)["action"] for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert actions.count("pool.change") == 3


async def _read_until(proc: subprocess.Popen[str], text: str, lines: list[str]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        lines.append(line)
        if text in line:
            return True
        if not line:
            return False
    return False


async def test_sighup_reloads_the_file_and_refuses_a_bad_one(tmp_path: Path, model: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    path = write_config(tmp_path, model, threshold=100.0, keys=["alice", "bob"])
    path.write_text(path.read_text().replace("port = 0\ncert", f"port = {port}\ncert"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "isthmus.edge.main", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    lines: list[str] = []
    try:
        assert await _read_until(proc, "edge ready", lines), "".join(lines)
        path.write_text(path.read_text().replace("threshold = 100.0", "threshold = 0.25"))
        proc.send_signal(signal.SIGHUP)
        assert await _read_until(proc, "config reloaded: router.threshold", lines), "".join(lines)
        path.write_text(path.read_text() + "\n[limits]\nmax_connections = -1\n")
        proc.send_signal(signal.SIGHUP)
        assert await _read_until(proc, "limits.max_connections", lines), "".join(lines)
        async with raw_client(port) as client:  # still serving, with the keys it had
            assert isinstance(final(await client.request(request("after", KEYS["bob"]))), Done)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    reloads = [(r["actor"], r["outcome"]) for r in records if r["action"] == "config.reload"]
    assert reloads == [("sighup", "ok"), ("sighup", "refused")]


async def test_a_key_limit_holds_across_a_reload(tmp_path: Path, model: Path) -> None:
    node = EdgeNode(EdgeConfig.load(write_config(tmp_path, model, threshold=100.0, keys=["alice"], limit=1)))
    await node.start()
    try:
        async with raw_client(node.quic_port) as client:
            held = client.send_message(request("held", KEYS["alice"], max_tokens=400, tier="edge"))
            assert isinstance(await client.first_message(held), TokenChunk)
            write_config(tmp_path, model, threshold=0.5, keys=["alice"], limit=1)
            assert (await admin(node, "POST", "/admin/reload"))[0] == 200
            second = final(await client.request(request("second", KEYS["alice"])))
            assert isinstance(second, Error) and second.code == ErrorCode.RATE_LIMITED
            client.reset(held)
        for _ in range(100):  # the held request's lease is released once its stream is gone
            if node.auth.num_in_use("alice") == 0:
                break
            await asyncio.sleep(0.05)
        async with raw_client(node.quic_port) as client:
            assert isinstance(final(await client.request(request("third", KEYS["alice"]))), Done)
    finally:
        await node.stop(grace_s=0.0)
