"""The SDK against the fake edge: streaming, completion, kwargs on the wire, typed errors."""

from __future__ import annotations

import asyncio

import pytest
from isthmus.client import (
    Chunk,
    InvalidRequest,
    PromptTooLong,
    Unauthenticated,
    Unavailable,
    connect,
)
from isthmus.protocol import Error as ErrorMsg
from isthmus.protocol import ErrorCode, unpack_ids

from .certs import Certs
from .fake_edge import FakeEdge


async def test_generate_streams_chunks(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca, server_name="localhost") as client:
        chunks = [c async for c in client.generate("hi", max_tokens=8)]
    assert all(isinstance(c, Chunk) for c in chunks)
    assert "".join(c.text for c in chunks) == "Hello world"
    assert [c.token_ids for c in chunks] == [[100], [101], [102]]
    assert chunks[0].tier == "edge"


async def test_complete_has_route_usage_timings(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca, api_key="k1") as client:
        answer = await client.complete("hi", logprobs=1)
    assert answer.text == "Hello world"
    assert answer.token_ids == [100, 101, 102]
    assert answer.logprobs == [-0.5, -0.5, -0.5]
    assert answer.finish_reason == "length"
    assert (answer.route.tier, answer.route.reason, answer.route.score) == ("edge", "wish_edge", 0.25)
    assert answer.route.is_degraded is False
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 3)
    assert answer.timings.total_ms == 3.0
    assert edge.requests[0].api_key == "k1"


async def test_sampling_kwargs_reach_the_wire(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        await client.complete(
            [{"role": "user", "content": "hello"}],
            max_tokens=7,
            temperature=0.5,
            top_p=0.9,
            top_k=5,
            min_p=0.1,
            repetition_penalty=1.1,
            presence_penalty=0.2,
            frequency_penalty=-0.2,
            seed=42,
            stop="END",
            stop_token_ids=[2, 3],
            logprobs=2,
            tier="center",
            priority=5,
            timeout=3.5,
            request_id="req-1",
        )
        await client.complete([1, 2, 3])
    req, by_ids = edge.requests
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.min_p) == (7, 0.5, 0.9, 5, 0.1)
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.1, 0.2, -0.2)
    assert (s.seed, s.stop, unpack_ids(s.stop_token_ids), s.logprobs) == (42, ["END"], [2, 3], 2)
    assert (req.tier, req.priority, req.timeout_ms, req.id) == ("center", 5, 3500, "req-1")
    assert req.messages is not None and req.messages[0].content == "hello"
    assert by_ids.prompt_ids is not None and unpack_ids(by_ids.prompt_ids) == [1, 2, 3]
    assert len(by_ids.id) == 32  # auto uuid


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"top_p": "x"}, "top_p"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"temperature": float("nan")}, "temperature"),
        ({"tier": "moon"}, "tier"),
        ({"timeout": 0}, "timeout"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"bogus": 1}, "bogus"),
        ({"top_p": 2.0}, "sampling.top_p"),  # a range rule of the protocol, surfaced typed
    ],
)
async def test_bad_kwargs_raise_naming_the_field(
    edge: FakeEdge, certs: Certs, kwargs: dict[str, object], field: str
) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        with pytest.raises(InvalidRequest) as info:
            client.generate("hi", **kwargs)  # raised at call time, before any I/O
    assert info.value.field == field
    assert field in str(info.value)
    assert edge.requests == []


async def test_bad_prompt_forms(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        for prompt in ([], [{"role": "king", "content": "x"}], b"bytes", 42):
            with pytest.raises(InvalidRequest):
                client.generate(prompt)  # type: ignore[arg-type]


async def test_prompt_too_long_is_typed(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        with pytest.raises(PromptTooLong):
            client.generate("x" * (1024 * 1024 + 1))


async def test_edge_error_maps_to_typed_exception(edge: FakeEdge, certs: Certs) -> None:
    edge.fail_next.append(ErrorMsg(id="", code=ErrorCode.UNAUTHENTICATED, message="bad key"))
    async with connect(edge.address, ca=certs.ca, api_key="wrong") as client:
        with pytest.raises(Unauthenticated) as info:
            await client.complete("hi")
    assert info.value.code == ErrorCode.UNAUTHENTICATED
    assert info.value.retryable is False
    assert "bad key" in str(info.value)
    assert len(edge.requests) == 1  # not retryable: tried once


async def test_untrusted_certificate_fails(edge: FakeEdge, other_certs: Certs) -> None:
    with pytest.raises(Unavailable):
        async with connect(edge.address, ca=other_certs.ca, connect_timeout=2.0):
            pass


async def test_verify_false_accepts_any_certificate(edge: FakeEdge) -> None:
    async with connect(edge.address, verify=False) as client:
        assert (await client.complete("hi")).text == "Hello world"


async def test_concurrent_requests_share_a_connection(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        answers = await asyncio.gather(*(client.complete(f"p{i}") for i in range(8)))
    assert [a.text for a in answers] == ["Hello world"] * 8
    assert len(edge.connections) == 1
