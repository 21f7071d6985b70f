"""OpenAI-compatible HTTP API against a real EdgeNode (tiny checkpoint, no center), with the official
`openai` package as the client: chat and completions, streaming and not, models, errors, route."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from isthmus.edge.config import EdgeConfig
from isthmus.edge.node import EdgeNode
from isthmus.edge.openai_schema import error_from_protocol, parse_chat, parse_completion
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import ErrorCode

from .quic_helpers import write_self_signed

pytestmark = pytest.mark.timeout(60)
API_KEY = "sk-test-openai"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("openai_edge_model"), "llama", seed=7)


@pytest.fixture
async def node(tmp_path: Path, model: Path) -> AsyncIterator[EdgeNode]:
    cert, key = write_self_signed(tmp_path)
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[model]
path = "{model}"
name = "tiny-edge"

[engine]
num_kv_blocks = 32
max_num_seqs = 4

[listen]
host = "127.0.0.1"
port = 0
cert = "{cert}"
key = "{key}"

[http]
host = "127.0.0.1"
port = 0

[auth]
allow_anonymous = false

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


def client(node: EdgeNode, api_key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://{node.http_address}/v1", api_key=api_key, max_retries=0)


EXTRA = {"tier": "edge", "ignore_eos": True}


async def test_chat_whole_and_streamed(node: EdgeNode) -> None:
    async with client(node) as api:
        raw = await api.chat.completions.with_raw_response.create(
            model="tiny-edge",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            max_tokens=5, temperature=0.0, seed=3, extra_body=EXTRA,
        )
        assert raw.headers["x-isthmus-tier"] == "edge"
        assert raw.headers["x-isthmus-route-reason"] == "wish_edge"
        float(raw.headers["x-isthmus-route-score"])
        done = raw.parse()
        assert done.object == "chat.completion" and done.model == "tiny-edge"
        assert done.choices[0].finish_reason == "length"
        assert done.choices[0].message.role == "assistant"
        assert done.usage is not None and done.usage.completion_tokens == 5
        assert done.usage.total_tokens == done.usage.prompt_tokens + 5 and done.usage.prompt_tokens > 0
        assert (done.model_extra or {})["isthmus_route"]["tier"] == "edge"

        stream = await api.chat.completions.create(
            model="tiny-edge",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            max_tokens=5, temperature=0.0, seed=3, stream=True, stream_options={"include_usage": True},
            extra_body=EXTRA,
        )
        chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content  # greedy: same answer streamed or not
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert (finals[0].model_extra or {})["isthmus_route"]["reason"] == "wish_edge"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


async def test_completions_whole_and_streamed_and_models(node: EdgeNode) -> None:
    async with client(node) as api:
        done = await api.completions.create(
            model="tiny-edge", prompt="Once upon", max_tokens=4, temperature=0.0, extra_body=EXTRA,
        )
        assert done.object == "text_completion" and done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == 4
        stream = await api.completions.create(
            model="tiny-edge", prompt="Once upon", max_tokens=4, temperature=0.0, stream=True,
            extra_body=EXTRA,
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
        assert chunks[-1].choices[0].finish_reason == "length"
        models = await api.models.list()
    assert [m.id for m in models.data] == ["tiny-edge"]


async def test_route_headers_say_when_the_center_is_unavailable(node: EdgeNode) -> None:
    async with client(node) as api:
        for stream in (False, True):
            raw = await api.completions.with_raw_response.create(
                model="tiny-edge", prompt="Hard question", max_tokens=2, stream=stream,
                extra_body={"tier": "center", "ignore_eos": True},
            )
            assert raw.headers["x-isthmus-tier"] == "edge"
            assert raw.headers["x-isthmus-route-reason"] == "center_unavailable"


async def test_bad_requests_are_400_naming_the_param(node: EdgeNode) -> None:
    async with client(node) as api:
        with pytest.raises(openai.BadRequestError) as err:
            await api.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=2)
        assert err.value.status_code == 400 and err.value.param == "n"
        with pytest.raises(openai.BadRequestError) as err:
            await api.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], top_p=5.0, stream=True
            )
        assert err.value.param == "top_p"
        with pytest.raises(openai.BadRequestError) as err:
            await api.completions.create(model="m", prompt=["a", "b"])
        assert err.value.param == "prompt"
    url = f"http://{node.http_address}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with session.post(url, data=b"{not json", headers=headers) as resp:
            body = await resp.json()
    assert resp.status == 400 and "not valid JSON" in body["error"]["message"]


async def test_unauthenticated_is_401(node: EdgeNode) -> None:
    async with client(node, api_key="sk-wrong") as api:
        with pytest.raises(openai.AuthenticationError) as err:
            await api.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
        assert err.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            await api.models.list()


async def test_client_disconnect_cancels_the_request(node: EdgeNode) -> None:
    assert node.orchestrator is not None
    async with client(node) as api:
        stream = await api.completions.create(
            model="tiny-edge", prompt="Go on", max_tokens=400, stream=True, extra_body=EXTRA,
        )
        async for _ in stream:
            break
        # hundreds of tokens to go: the answer is still being generated when the client leaves
        assert node.orchestrator.num_in_flight == 1
        await stream.close()
    for _ in range(200):
        if node.orchestrator.num_in_flight == 0 and node.engine.load().num_running == 0:
            break
        await asyncio.sleep(0.05)
    assert node.orchestrator.num_in_flight == 0
    assert node.engine.load().num_running == 0


def test_parsing_units() -> None:
    req = parse_chat(
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}]},
                      {"role": "user", "content": "b"}],
         "max_completion_tokens": 7, "stop": "x", "top_k": -1, "min_p": 0.1, "repetition_penalty": 1.1},
        "k",
    )
    assert req.messages is not None and req.messages[0].role == "system" and req.messages[0].content == "a"
    assert req.sampling.max_tokens == 7 and req.sampling.stop == ["x"] and req.sampling.top_k == 0
    assert req.api_key == "k" and req.tier == "auto"
    assert parse_completion({"prompt": ["only"]}, None).prompt == "only"
    for body, param in [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "tier": "moon"}, "tier"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ]:
        with pytest.raises(Exception) as err:
            parse_chat(body, None)
        assert getattr(err.value, "param", None) == param and err.value.status == 400  # type: ignore[attr-defined]
    statuses = {
        ErrorCode.UNAUTHENTICATED: 401, ErrorCode.RATE_LIMITED: 429, ErrorCode.OVERLOADED: 429,
        ErrorCode.UNAVAILABLE: 503, ErrorCode.DRAINING: 503, ErrorCode.DEADLINE_EXCEEDED: 504,
        ErrorCode.INTERNAL: 500, ErrorCode.PROMPT_TOO_LONG: 400,
    }
    for code, status in statuses.items():
        assert error_from_protocol(code, "x").status == status
