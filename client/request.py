"""Build a validated `GenerateRequest` from what an app passes to `generate()` / `complete()`.

Type errors are caught here with the keyword's own name; range rules are the protocol's
(`isthmus.protocol.validate`), surfaced as `InvalidRequest` whose field names the culprit.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from isthmus.protocol import (
    ChatMessage,
    GenerateRequest,
    ProtocolError,
    SamplingOptions,
    pack_ids,
    validate,
)

from .errors import InvalidRequest, from_protocol_error

Prompt = str | Sequence[int] | Sequence[ChatMessage] | Sequence[Mapping[str, str]]
"""A text prompt, token ids, or chat messages (`ChatMessage` or ``{"role", "content"}`` maps)."""

_INT_FIELDS = ("max_tokens", "top_k", "seed", "logprobs")
_FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)
_NULLABLE = frozenset({"seed", "logprobs"})
SAMPLING_KWARGS = frozenset(_INT_FIELDS + _FLOAT_FIELDS + ("stop", "stop_token_ids", "ignore_eos"))
REQUEST_KWARGS = frozenset({"tier", "priority", "timeout", "request_id"})


@dataclass(frozen=True)
class BuiltRequest:
    """A request ready to send, and its local deadline budget (seconds, None = no timeout)."""

    request: GenerateRequest
    timeout: float | None


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", field=field)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_sampling(kwargs: Mapping[str, Any]) -> SamplingOptions:
    values: dict[str, Any] = {}
    for name, value in kwargs.items():
        if value is None and name in _NULLABLE:
            values[name] = None
        elif name in _INT_FIELDS:
            if not _is_int(value):
                raise _bad(name, f"expected an int, got {type(value).__name__}")
            values[name] = value
        elif name in _FLOAT_FIELDS:
            if not (_is_int(value) or isinstance(value, float)):
                raise _bad(name, f"expected a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise _bad(name, "must be finite")
            values[name] = float(value)
        elif name == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, Sequence) or not all(isinstance(s, str) for s in stops):
                raise _bad(name, "expected a string or a list of strings")
            values[name] = list(stops)
        elif name == "stop_token_ids":
            if not isinstance(value, Sequence) or not all(_is_int(t) for t in value):
                raise _bad(name, "expected a list of ints")
            if any(t < 0 or t > 2**31 - 1 for t in value):
                raise _bad(name, "token ids must be in [0, 2**31 - 1]")
            values[name] = pack_ids(list(value))
        elif name == "ignore_eos":
            if not isinstance(value, bool):
                raise _bad(name, f"expected a bool, got {type(value).__name__}")
            values[name] = value
    return SamplingOptions(**values)


def _prompt_fields(prompt: object) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"prompt": prompt}
    if isinstance(prompt, bytes | bytearray) or not isinstance(prompt, Sequence):
        raise _bad("prompt", "expected a string, a list of token ids or a list of chat messages")
    items = list(prompt)
    if not items:
        raise _bad("prompt", "empty list: give token ids or chat messages")
    if all(_is_int(t) for t in items):
        if any(t < 0 or t > 2**31 - 1 for t in items):
            raise _bad("prompt", "token ids must be in [0, 2**31 - 1]")
        return {"prompt_ids": pack_ids(items)}
    messages: list[ChatMessage] = []
    for i, item in enumerate(items):
        if isinstance(item, ChatMessage):
            messages.append(item)
        elif isinstance(item, Mapping) and set(item) == {"role", "content"}:
            role, content = item["role"], item["content"]
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise _bad(f"messages[{i}]", "role must be system/user/assistant, content a string")
            messages.append(ChatMessage(role=role, content=content))
        else:
            raise _bad(f"messages[{i}]", "expected a ChatMessage or a {'role', 'content'} mapping")
    return {"messages": messages}


def build_request(
    prompt: object,
    *,
    api_key: str | None,
    default_timeout: float | None,
    kwargs: Mapping[str, Any],
) -> BuiltRequest:
    """Validate `prompt` and keyword arguments and build the request.

    Raises `InvalidRequest` naming the offending keyword (or protocol field) on bad input.
    """
    unknown = sorted(set(kwargs) - SAMPLING_KWARGS - REQUEST_KWARGS)
    if unknown:
        raise _bad(unknown[0], "unknown keyword argument")
    sampling = _check_sampling({k: v for k, v in kwargs.items() if k in SAMPLING_KWARGS})

    tier = kwargs.get("tier", "auto")
    if tier not in ("auto", "edge", "center"):
        raise _bad("tier", f"expected 'auto', 'edge' or 'center', got {tier!r}")
    priority = kwargs.get("priority", 0)
    if not _is_int(priority):
        raise _bad("priority", f"expected an int, got {type(priority).__name__}")
    timeout = kwargs.get("timeout", default_timeout)
    timeout_ms: int | None = None
    if timeout is not None:
        if not (_is_int(timeout) or isinstance(timeout, float)) or not math.isfinite(timeout):
            raise _bad("timeout", "expected a finite number of seconds or None")
        if timeout <= 0:
            raise _bad("timeout", "must be > 0 seconds")
        timeout = float(timeout)
        timeout_ms = max(1, math.ceil(timeout * 1000.0))
    request_id = kwargs.get("request_id") or uuid.uuid4().hex
    if not isinstance(request_id, str):
        raise _bad("request_id", f"expected a string, got {type(request_id).__name__}")

    request = GenerateRequest(
        id=request_id,
        sampling=sampling,
        tier=tier,
        priority=priority,
        timeout_ms=timeout_ms,
        api_key=api_key,
        **_prompt_fields(prompt),
    )
    try:
        validate(request)
    except ProtocolError as exc:
        raise from_protocol_error(exc, request_id) from None
    return BuiltRequest(request=request, timeout=timeout)
