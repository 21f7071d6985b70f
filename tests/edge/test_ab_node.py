"""A/B split and rollout on a real edge node: the variant in Route and the OpenAI headers, and
`isthmus rollout` driving the admin API (fake center replicas, all on loopback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from isthmus.cli.rollout import main as rollout_main
from isthmus.edge.auth import hash_key
from isthmus.edge.config import EdgeConfig
from isthmus.edge.node import EdgeNode
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import Done, GenerateRequest, SamplingOptions

from .quic_helpers import final, raw_client, write_self_signed
from .test_pool import FakeCenter

pytestmark = pytest.mark.timeout(120)
ADMIN = "ab-admin-token"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ab_model"), "llama", seed=9)


async def test_variant_is_reported_and_the_rollout_cli_drives_the_split(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stable, candidate = FakeCenter("stable"), FakeCenter("candidate")
    await asyncio.gather(stable.start(), candidate.start())
    cert, key = write_self_signed(tmp_path)
    path = tmp_path / "edge.toml"
    path.write_text(f"""
[model]
path = "{model}"
[engine]
num_kv_blocks = 32
[listen]
host = "127.0.0.1"
port = 0
cert = "{cert}"
key = "{key}"
[http]
port = 0
[center]
endpoints = ["{stable.endpoint}"]
[ab]
candidate_endpoints = ["{candidate.endpoint}"]
percent = 50
salt = "t"
[admin]
token_sha256 = "{hash_key(ADMIN)}"
""")
    node = EdgeNode(EdgeConfig.load(path))
    await node.start()
    try:
        seen: dict[str, set[str]] = {}
        async with raw_client(node.quic_port) as client:
            for i in range(24):
                user = f"user{i % 6}"
                sampling = SamplingOptions(max_tokens=4)
                req = GenerateRequest(id=f"r{i}", prompt="hi", tier="center", user=user, sampling=sampling)
                done = final(await client.request(req))
                assert isinstance(done, Done) and done.route.variant == done.model  # fakes named by variant
                seen.setdefault(user, set()).add(done.route.variant)
        assert all(len(v) == 1 for v in seen.values())
        assert {v for vs in seen.values() for v in vs} == {"stable", "candidate"}

        url = f"http://127.0.0.1:{node.http_port}"
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tier": "center",
            "user": "user1",
            "max_tokens": 4,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["x-isthmus-variant"] == next(iter(seen["user1"]))

        monkeypatch.setenv("ISTHMUS_ADMIN_TOKEN", ADMIN)

        def cli(*args: str) -> int:
            return rollout_main(["--edge", url, *args])

        start = ("start", "--steps", "10,100", "--interval", "1h", "--max-error-rate", "1%")
        assert await asyncio.to_thread(cli, *start) == 0
        assert node.ab.split.percent == 10
        assert await asyncio.to_thread(cli, "status") == 0
        assert await asyncio.to_thread(cli, *start) == 1  # one at a time: refused (409)
        assert await asyncio.to_thread(cli, "pause") == 0 and node.rollout.rollout.state.status == "paused"
        assert await asyncio.to_thread(cli, "abort") == 0 and node.ab.split.percent == 0
        assert (tmp_path / "rollout-state.json").exists()  # [ab] rollout_state, next to the config
        monkeypatch.setenv("ISTHMUS_ADMIN_TOKEN", "wrong")
        assert await asyncio.to_thread(cli, "status") == 1
    finally:
        await node.stop(grace_s=0.0)
        await asyncio.gather(stable.stop(), candidate.stop())
