"""Field-by-field validation: every bad value is a ProtocolError naming the field."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import msgpack
import pytest
from isthmus.protocol import ErrorCode, ProtocolError, decode, limits
from isthmus.protocol.messages import GenerateRequest

from .samples import SAMPLES

INVALID = ErrorCode.INVALID_MESSAGE
TOO_LONG = ErrorCode.PROMPT_TOO_LONG
VERSION = ErrorCode.UNSUPPORTED_VERSION


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()

BASES: dict[str, dict[str, Any]] = {
    "prompt": SAMPLES[0][1],
    "chat": SAMPLES[1][1],
    "ids": SAMPLES[2][1],
    "chunk": SAMPLES[3][1],
    "chunk_route": SAMPLES[4][1],
    "done": SAMPLES[5][1],
    "error": SAMPLES[6][1],
    "cancel": SAMPLES[8][1],
    "status_request": SAMPLES[9][1],
    "status": SAMPLES[10][1],
    "drain": SAMPLES[11][1],
    "drain_reply": SAMPLES[12][1],
}
BIG = limits.MAX_PROMPT_CHARS


def le32(*ids: int) -> bytes:
    return b"".join(i.to_bytes(4, "little", signed=True) for i in ids)


# (base, path, value, code, field named at the start of the message)
CASES: list[tuple[str, str, Any, ErrorCode, str]] = [
    ("prompt", "id", "", INVALID, "id"),
    ("prompt", "id", "x" * (limits.MAX_ID_LEN + 1), INVALID, "id"),
    ("prompt", "id", 5, INVALID, "id"),
    ("prompt", "id", DELETE, INVALID, "id"),
    ("prompt", "version", 2, VERSION, "version"),
    ("prompt", "version", 0, VERSION, "version"),
    ("prompt", "version", "1", VERSION, "version"),
    ("prompt", "type", "generate", INVALID, "type"),
    ("prompt", "type", DELETE, INVALID, "type"),
    ("prompt", "prompt", None, INVALID, "prompt"),
    ("prompt", "prompt", "", INVALID, "prompt"),
    ("prompt", "prompt", "x" * (BIG + 1), TOO_LONG, "prompt"),
    ("prompt", "prompt", b"bytes", INVALID, "prompt"),
    ("prompt", "messages", [{"role": "user", "content": "hi"}], INVALID, "prompt"),
    ("prompt", "prompt_ids", le32(1), INVALID, "prompt"),
    ("chat", "messages", [], INVALID, "messages"),
    (
        "chat",
        "messages",
        [{"role": "user", "content": "a"}] * (limits.MAX_MESSAGES + 1),
        TOO_LONG,
        "messages",
    ),
    ("chat", "messages[0].role", "tool", INVALID, "messages[0].role"),
    ("chat", "messages[1].content", 3, INVALID, "messages[1].content"),
    ("chat", "messages[1].content", DELETE, INVALID, "messages[1].content"),
    ("chat", "messages[1].content", "x" * (BIG + 1), TOO_LONG, "messages[1].content"),
    ("chat", "messages", [{"role": "user", "content": "x" * (BIG // 2 + 1)}] * 2, TOO_LONG, "messages"),
    ("chat", "messages[0]", "hi", INVALID, "messages[0]"),
    ("ids", "prompt_ids", b"\x01\x00\x00", INVALID, "prompt_ids"),
    ("ids", "prompt_ids", b"", INVALID, "prompt_ids"),
    ("ids", "prompt_ids", le32(1, -1), INVALID, "prompt_ids"),
    ("ids", "prompt_ids", le32(1) * (limits.MAX_PROMPT_TOKENS + 1), TOO_LONG, "prompt_ids"),
    ("ids", "prompt_ids", [1, 2, 3], INVALID, "prompt_ids"),
    ("prompt", "sampling.max_tokens", 0, INVALID, "sampling.max_tokens"),
    ("prompt", "sampling.max_tokens", limits.MAX_TOKENS + 1, INVALID, "sampling.max_tokens"),
    ("prompt", "sampling.max_tokens", 1.5, INVALID, "sampling.max_tokens"),
    ("prompt", "sampling.temperature", -0.1, INVALID, "sampling.temperature"),
    ("prompt", "sampling.temperature", 100.5, INVALID, "sampling.temperature"),
    ("prompt", "sampling.temperature", math.nan, INVALID, "sampling.temperature"),
    ("prompt", "sampling.temperature", math.inf, INVALID, "sampling.temperature"),
    ("prompt", "sampling.temperature", "hot", INVALID, "sampling.temperature"),
    ("prompt", "sampling.top_p", 0.0, INVALID, "sampling.top_p"),
    ("prompt", "sampling.top_p", 1.01, INVALID, "sampling.top_p"),
    ("prompt", "sampling.top_p", math.nan, INVALID, "sampling.top_p"),
    ("prompt", "sampling.top_k", -1, INVALID, "sampling.top_k"),
    ("prompt", "sampling.top_k", 2**31, INVALID, "sampling.top_k"),
    ("prompt", "sampling.min_p", -0.01, INVALID, "sampling.min_p"),
    ("prompt", "sampling.min_p", 1.5, INVALID, "sampling.min_p"),
    ("prompt", "sampling.repetition_penalty", 0.0, INVALID, "sampling.repetition_penalty"),
    ("prompt", "sampling.repetition_penalty", 10.5, INVALID, "sampling.repetition_penalty"),
    ("prompt", "sampling.presence_penalty", 2.5, INVALID, "sampling.presence_penalty"),
    ("prompt", "sampling.presence_penalty", -math.inf, INVALID, "sampling.presence_penalty"),
    ("prompt", "sampling.frequency_penalty", -2.01, INVALID, "sampling.frequency_penalty"),
    ("prompt", "sampling.seed", -1, INVALID, "sampling.seed"),
    ("prompt", "sampling.seed", 2**63, INVALID, "sampling.seed"),
    ("prompt", "sampling.stop", [""], INVALID, "sampling.stop[0]"),
    ("prompt", "sampling.stop", ["a", "x" * (limits.MAX_STOP_STRING_LEN + 1)], INVALID, "sampling.stop[1]"),
    ("prompt", "sampling.stop", ["s"] * (limits.MAX_STOP_STRINGS + 1), INVALID, "sampling.stop"),
    ("prompt", "sampling.stop", "stop", INVALID, "sampling.stop"),
    ("prompt", "sampling.stop_token_ids", b"\x01\x00\x00", INVALID, "sampling.stop_token_ids"),
    ("prompt", "sampling.stop_token_ids", le32(-5), INVALID, "sampling.stop_token_ids"),
    (
        "prompt",
        "sampling.stop_token_ids",
        le32(1) * (limits.MAX_STOP_TOKEN_IDS + 1),
        INVALID,
        "sampling.stop_token_ids",
    ),
    ("prompt", "sampling.logprobs", limits.MAX_LOGPROBS + 1, INVALID, "sampling.logprobs"),
    ("prompt", "sampling.logprobs", -1, INVALID, "sampling.logprobs"),
    ("prompt", "sampling.ignore_eos", "yes", INVALID, "sampling.ignore_eos"),
    ("prompt", "sampling", None, INVALID, "sampling"),
    ("prompt", "tier", "cloud", INVALID, "tier"),
    ("prompt", "priority", limits.MAX_PRIORITY + 1, INVALID, "priority"),
    ("prompt", "priority", limits.MIN_PRIORITY - 1, INVALID, "priority"),
    ("prompt", "timeout_ms", 0, INVALID, "timeout_ms"),
    ("prompt", "timeout_ms", limits.MAX_TIMEOUT_MS + 1, INVALID, "timeout_ms"),
    ("prompt", "api_key", "k" * (limits.MAX_API_KEY_LEN + 1), INVALID, "api_key"),
    ("chat", "continuation.token_ids", b"\x00", INVALID, "continuation.token_ids"),
    ("chat", "continuation.token_ids", le32(3, -2), INVALID, "continuation.token_ids"),
    ("chat", "continuation.tokenizer_fingerprint", "", INVALID, "continuation.token_ids"),
    (
        "chat",
        "continuation.tokenizer_fingerprint",
        "f" * (limits.MAX_FINGERPRINT_LEN + 1),
        INVALID,
        "continuation.tokenizer_fingerprint",
    ),
    ("chat", "continuation.text", "x" * (limits.MAX_CONTINUATION_CHARS + 1), INVALID, "continuation.text"),
    ("chat", "continuation.reason", "r" * (limits.MAX_REASON_LEN + 1), INVALID, "continuation.reason"),
    ("chunk", "token_ids", b"\x01\x02", INVALID, "token_ids"),
    ("chunk", "token_ids", le32(-7), INVALID, "token_ids"),
    ("chunk", "tier", "auto", INVALID, "tier"),
    ("chunk", "tier", DELETE, INVALID, "tier"),
    ("chunk", "logprobs[1]", math.nan, INVALID, "logprobs[1]"),
    ("chunk", "text", None, INVALID, "text"),
    ("chunk_route", "route.tier", "auto", INVALID, "route.tier"),
    ("chunk_route", "route.score", math.inf, INVALID, "route.score"),
    ("done", "finish_reason", "eos", INVALID, "finish_reason"),
    ("done", "usage.prompt_tokens", -1, INVALID, "usage.prompt_tokens"),
    ("done", "timings.total_ms", -1.0, INVALID, "timings.total_ms"),
    ("done", "timings.queue_ms", math.nan, INVALID, "timings.queue_ms"),
    ("done", "route", DELETE, INVALID, "route"),
    ("done", "model", "m" * (limits.MAX_MODEL_NAME_LEN + 1), INVALID, "model"),
    ("error", "code", 99, INVALID, "code"),
    ("error", "code", "OVERLOADED", INVALID, "code"),
    ("error", "message", "m" * (limits.MAX_ERROR_MESSAGE_LEN + 1), INVALID, "message"),
    ("error", "retryable", 1, INVALID, "retryable"),
    ("cancel", "id", DELETE, INVALID, "id"),
    ("status_request", "version", 2, VERSION, "version"),
    ("status", "version", 3, VERSION, "version"),
    ("status", "num_running", -1, INVALID, "num_running"),
    ("status", "tokens_per_s", -0.5, INVALID, "tokens_per_s"),
    ("status", "tier", "auto", INVALID, "tier"),
    ("drain", "grace_s", -1.0, INVALID, "grace_s"),
    ("drain", "grace_s", limits.MAX_DRAIN_GRACE_S * 2, INVALID, "grace_s"),
    ("drain_reply", "num_in_flight", -3, INVALID, "num_in_flight"),
]

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def mutated(base: str, path: str, value: Any) -> bytes:
    """The base message's wire map with `path` set to `value` (or deleted), packed by stock msgpack."""
    wire = copy.deepcopy(BASES[base])
    steps: list[str | int] = [name if name else int(index) for name, index in _STEP.findall(path)]
    parent: Any = wire
    for step in steps[:-1]:
        parent = parent[step]
    if value is DELETE:
        del parent[steps[-1]]
    else:
        parent[steps[-1]] = value
    return msgpack.packb(wire, use_bin_type=True)


def test_bases_are_valid() -> None:
    for base in BASES:
        decode(msgpack.packb(BASES[base], use_bin_type=True))


@pytest.mark.parametrize(
    ("base", "path", "value", "code", "field"),
    CASES,
    ids=[f"{b}:{p}={v!r:.20}" for b, p, v, _, _ in CASES],
)
def test_bad_field_is_refused_by_name(base: str, path: str, value: Any, code: ErrorCode, field: str) -> None:
    data = mutated(base, path, value)
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code == code, info.value
    assert info.value.message.startswith(f"{field}: "), info.value.message
    assert info.value.retryable is False


# Values on the inclusive edges of each range are accepted.
EDGES: list[tuple[str, str, Any]] = [
    ("prompt", "sampling.max_tokens", 1),
    ("prompt", "sampling.max_tokens", limits.MAX_TOKENS),
    ("prompt", "sampling.temperature", 0),
    ("prompt", "sampling.temperature", 100.0),
    ("prompt", "sampling.top_p", 1e-9),
    ("prompt", "sampling.min_p", 1.0),
    ("prompt", "sampling.repetition_penalty", 10.0),
    ("prompt", "sampling.presence_penalty", -2.0),
    ("prompt", "sampling.frequency_penalty", 2.0),
    ("prompt", "sampling.seed", 0),
    ("prompt", "sampling.logprobs", 0),
    ("prompt", "sampling.stop", ["s" * limits.MAX_STOP_STRING_LEN] * limits.MAX_STOP_STRINGS),
    ("prompt", "sampling.stop_token_ids", le32(2**31 - 1) * limits.MAX_STOP_TOKEN_IDS),
    ("prompt", "prompt", "x" * BIG),
    ("prompt", "priority", limits.MIN_PRIORITY),
    ("prompt", "timeout_ms", limits.MAX_TIMEOUT_MS),
    ("prompt", "id", "i" * limits.MAX_ID_LEN),
    ("ids", "prompt_ids", le32(0) * limits.MAX_PROMPT_TOKENS),
    ("chat", "messages", [{"role": "assistant", "content": "x" * (BIG // 2)}] * 2),
    ("chat", "continuation.token_ids", b""),
    ("chunk", "logprobs", []),
    ("drain", "grace_s", 0),
]


@pytest.mark.parametrize(("base", "path", "value"), EDGES, ids=[f"{b}:{p}" for b, p, _ in EDGES])
def test_edge_values_are_accepted(base: str, path: str, value: Any) -> None:
    decode(mutated(base, path, value))


def test_version_error_wins_over_other_field_errors() -> None:
    # A newer peer may send values we do not know; what it needs to hear is the version.
    data = mutated("prompt", "version", 2)
    wire = msgpack.unpackb(data)
    wire["tier"] = "mars"
    with pytest.raises(ProtocolError) as info:
        decode(msgpack.packb(wire))
    assert info.value.code == VERSION


def test_default_request_is_valid_with_one_prompt_form() -> None:
    from isthmus.protocol import encode

    assert decode(encode(GenerateRequest(id="a", prompt="p")), expected=GenerateRequest).prompt == "p"
