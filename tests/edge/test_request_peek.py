"""`peek_prompt_bytes`: a request's prompt length read from its frame body's first bytes."""

from __future__ import annotations

import msgspec
from isthmus.edge.request_peek import GIVE_UP, NEED_MORE, PEEK_MAX, peek_prompt_bytes
from isthmus.protocol import ChatMessage, GenerateRequest, SamplingOptions, encode_frame


def body(req: GenerateRequest) -> bytes:
    return encode_frame(req)[4:]


def test_the_prompt_length_is_read_from_a_prefix_of_the_body() -> None:
    for prompt in ("hi", "x" * 200, "漢字" * 50_000):
        b = body(GenerateRequest(id="r", prompt=prompt, api_key="k", sampling=SamplingOptions(max_tokens=1)))
        assert peek_prompt_bytes(b[:PEEK_MAX]) == len(prompt.encode())


def test_too_short_a_prefix_needs_more_bytes() -> None:
    b = body(GenerateRequest(id="r" * 100, prompt="x" * 5000))
    assert peek_prompt_bytes(b[:20]) == NEED_MORE
    assert peek_prompt_bytes(b[:0]) == NEED_MORE


def test_no_plain_prompt_or_an_unexpected_shape_gives_up() -> None:
    chat = GenerateRequest(id="r", messages=[ChatMessage(role="user", content="hi")])
    assert peek_prompt_bytes(body(chat)) == GIVE_UP  # prompt is nil
    # a container before the prompt (a hand-written client's field order): not walked
    odd = msgspec.msgpack.encode({"sampling": {"max_tokens": 1}, "prompt": "hi"})
    assert peek_prompt_bytes(odd) == GIVE_UP
    assert peek_prompt_bytes(b"\x93\x01\x02\x03") == GIVE_UP  # not a map
    assert peek_prompt_bytes(msgspec.msgpack.encode({"id": "r"})) == GIVE_UP  # no prompt at all
    # a long prefix that never reaches the prompt: give up rather than wait for more
    assert peek_prompt_bytes(msgspec.msgpack.encode({"id": "r" * 5000, "prompt": "hi"})[:PEEK_MAX]) == GIVE_UP
