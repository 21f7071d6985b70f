"""Hostile input to the OpenAI-compatible API on a real EdgeNode: every refusal is a 4xx with an
OpenAI-style JSON error naming the field, never a 5xx; keys are checked before bodies are read and
wrong ones are throttled per source address; `/metrics` needs a key when keys are configured."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from isthmus.edge.node import EdgeNode

from . import test_openai_api as base

model, node = base.model, base.node  # the fixtures: a real EdgeNode on a tiny checkpoint, keys on
API_KEY = base.API_KEY

pytestmark = pytest.mark.timeout(60)
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HI = [{"role": "user", "content": "hi"}]


async def post(
    node: EdgeNode, body: Any, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    url = f"http://{node.http_address}{path}"
    async with aiohttp.ClientSession() as session:
        kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with session.post(url, headers=headers if headers is not None else AUTH, **kw) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json(), dict(resp.headers)


def assert_openai_error(status: int, body: dict[str, Any], expected: int, param: str | None) -> None:
    assert status == expected, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    assert err["param"] == param, err


async def test_malformed_shapes_are_400_naming_the_field(node: EdgeNode) -> None:
    cases: list[tuple[Any, str | None]] = [
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": {"a": 1}, "content": "hi"}]}, "messages[0].role"),
        ({"messages": HI, "max_tokens": 10**30}, "max_tokens"),
        ({"messages": HI, "max_completion_tokens": 10**30}, "max_completion_tokens"),
        ({"messages": HI, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": HI, "seed": -(10**40)}, "seed"),
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages"),
    ]
    for body, param in cases:
        status, answer, _ = await post(node, body)
        assert_openai_error(status, answer, 400, param)


async def test_deep_or_unparsable_json_is_400(node: EdgeNode) -> None:
    for raw in (b"[" * 50_000 + b"]" * 50_000, b'{"messages": ' + b"[" * 50_000, b"1" * 10_000, b"\xff\xfe{"):
        status, answer, _ = await post(node, None, raw=raw)
        assert_openai_error(status, answer, 400, None)


async def test_unsupported_openai_fields_are_400_naming_them(node: EdgeNode) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    for name, value in [
        ("tools", [tool]), ("tool_choice", "auto"), ("response_format", {"type": "json_object"}),
        ("logit_bias", {"50": 10}), ("logprobs", True), ("top_logprobs", 3), ("max_tokenz", 5),
    ]:
        status, answer, _ = await post(node, {"messages": HI, "max_tokens": 2, name: value})
        assert_openai_error(status, answer, 400, name)
        assert answer["error"]["code"] == "unsupported_parameter"
    status, answer, _ = await post(node, {"messages": [{"role": "assistant", "content": None,
                                                        "tool_calls": [{"id": "x"}]}]})
    assert_openai_error(status, answer, 400, "messages[0].tool_calls")
    status, answer, _ = await post(
        node, {"prompt": "a", "max_tokens": 1, "logprobs": 2}, path="/v1/completions"
    )
    assert_openai_error(status, answer, 400, "logprobs")
    # values that ask for nothing beyond the default are accepted (SDKs send them)
    status, answer, _ = await post(node, {
        "messages": HI, "max_tokens": 2, "tier": "edge", "logprobs": False, "tools": [], "user": "u",
        "response_format": {"type": "text"}, "logit_bias": {}, "tool_choice": "none",
    })
    assert status == 200 and answer["object"] == "chat.completion"


async def test_a_body_over_the_limit_is_a_json_413_and_routes_errors_are_json(node: EdgeNode) -> None:
    status, answer, _ = await post(node, None, raw=b'{"prompt": "' + b"a" * (5 << 20) + b'"}',
                                   path="/v1/completions")
    assert_openai_error(status, answer, 413, None)
    url = f"http://{node.http_address}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/chat/completions", headers=AUTH) as resp:
            assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
        async with session.post(f"{url}/v1/nowhere", headers=AUTH) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_keys_are_checked_before_the_body_and_wrong_ones_throttled(node: EdgeNode) -> None:
    wrong = {"Authorization": "Bearer sk-wrong"}
    # a wrong key with a body over the limit: refused for the key, the body never read
    status, answer, _ = await post(node, None, headers=wrong, raw=b"x" * (5 << 20))
    assert_openai_error(status, answer, 401, None)
    statuses = []
    for _ in range(30):
        status, answer, headers = await post(node, {"messages": HI}, headers=wrong)
        statuses.append(status)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1 and answer["error"]["type"] == "rate_limit_error"
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}
    # the throttle is per source address: this one is held back even with the right key now
    status, _, _ = await post(node, {"messages": HI, "max_tokens": 1})
    assert status == 429


async def test_metrics_need_a_key_when_keys_are_configured(node: EdgeNode) -> None:
    url = f"http://{node.http_address}/metrics"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["type"] == "authentication_error"
        async with session.get(url, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        async with session.get(url, headers=AUTH) as resp:
            assert resp.status == 200 and "isthmus_edge" in await resp.text()
        async with session.get(f"http://{node.http_address}/healthz") as resp:
            assert resp.status == 200  # probes stay open


async def test_a_flood_of_huge_prompts_leaves_the_loop_free(node: EdgeNode) -> None:
    # 8 concurrent 1M-character CJK prompts (3 MB bodies) while /healthz is probed; the body of each
    # is encoded up front so the figure is the server's own work
    body = json.dumps({"prompt": "漢字かな交じり文" * 125_000, "max_tokens": 4}, ensure_ascii=False).encode()
    base_url = f"http://{node.http_address}"
    worst, is_done = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not is_done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, dict[str, Any]]:
            async with session.post(f"{base_url}/v1/completions", data=body, headers=AUTH) as resp:
                return resp.status, await resp.json()

        async def probe() -> list[int]:
            codes = []
            while not is_done:
                async with session.get(f"{base_url}/healthz") as resp:
                    codes.append(resp.status)
            return codes

        tick = asyncio.create_task(ticker())
        probes = asyncio.create_task(probe())
        answers = await asyncio.gather(*(one() for _ in range(8)))
        is_done = True
        await tick
        healthz = await probes
    for status, answer in answers:
        assert_openai_error(status, answer, 400, "prompt")
        assert answer["error"]["code"] == "prompt_too_long"
    assert healthz and set(healthz) == {200}
    print(f"\nHTTP flood of 8 x 1M-char prompts: event loop worst stall {worst * 1000:.1f} ms,"
          f" {len(healthz)} /healthz answered meanwhile")
