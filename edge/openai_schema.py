"""OpenAI-compatible request parsing and error mapping (sans-IO: JSON in, `GenerateRequest` out).

`parse_chat(body, ...)` / `parse_completion(body, ...)` turn a decoded JSON body into a protocol
`GenerateRequest`, raising `OpenAIError` (HTTP status, OpenAI error type, offending `param`) for
anything malformed or unsupported. `error_from_protocol(code, message)` maps a protocol `Error`
onto the same shape. Extension fields beyond OpenAI's: `tier`, `top_k`, `min_p`,
`repetition_penalty`, `ignore_eos` (as vLLM names them). OpenAI fields not implemented here are
refused with a 400 naming them (`openai_fields.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from isthmus.protocol import (
    ChatMessage,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    SamplingOptions,
    validate,
)
from isthmus.protocol.messages import Role

from .openai_fields import unsupported_field

# protocol ErrorCode -> (HTTP status, OpenAI error type)
_STATUS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_FRAME: (400, "invalid_request_error"),
    ErrorCode.INVALID_MESSAGE: (400, "invalid_request_error"),
    ErrorCode.UNSUPPORTED_VERSION: (400, "invalid_request_error"),
    ErrorCode.PROMPT_TOO_LONG: (400, "invalid_request_error"),
    ErrorCode.UNAUTHENTICATED: (401, "authentication_error"),
    ErrorCode.NOT_FOUND: (404, "not_found_error"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.OVERLOADED: (429, "rate_limit_error"),
    ErrorCode.CANCELLED: (499, "cancelled"),
    ErrorCode.UNAVAILABLE: (503, "service_unavailable"),
    ErrorCode.DRAINING: (503, "service_unavailable"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "timeout"),
    ErrorCode.SLOW_READER: (500, "server_error"),
    ErrorCode.INTERNAL: (500, "server_error"),
}

# protocol field path prefix -> the OpenAI request field a client sent
_PARAM_NAMES = {"prompt": "prompt", "messages": "messages", "tier": "tier", "api_key": "authorization"}

_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1  # what the wire format carries; fields have tighter bounds
_ROLES: dict[str, Role] = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant",
}
_FLOAT_FIELDS = (
    "temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
)


class OpenAIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error",
        param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}  # extra response headers (e.g. Retry-After)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str | None, message: str) -> OpenAIError:
    """A 400 naming the request field at fault."""
    return OpenAIError(400, f"{param}: {message}" if param else message, param=param, code="invalid_request")


def error_from_protocol(code: int, message: str, *, is_chat: bool = True) -> OpenAIError:
    """Map a protocol error (code and message, e.g. ``"sampling.top_p: ..."``) to an OpenAIError."""
    try:
        ecode = ErrorCode(code)
    except ValueError:
        ecode = ErrorCode.INTERNAL
    status, kind = _STATUS.get(ecode, (500, "server_error"))
    param = None
    if status == 400:
        head = message.split(":", 1)[0].strip()
        if head.startswith("sampling."):
            param = head.removeprefix("sampling.").split(".", 1)[0]
        elif head.split(".", 1)[0].split("[", 1)[0] in _PARAM_NAMES:
            param = _PARAM_NAMES[head.split(".", 1)[0].split("[", 1)[0]]
            if param == "prompt" and is_chat:
                param = "messages"
    return OpenAIError(status, message, type=kind, param=param, code=ecode.name.lower())


# --- field readers ---------------------------------------------------------------------------------
def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(name, f"expected a number, got {type(value).__name__}")
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"expected an integer, got {type(value).__name__}")
    if not _MIN_INT <= value <= _MAX_INT:
        raise invalid(name, f"{value:.3g} is out of range" if abs(value) < 10**300 else "out of range")
    return value


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise invalid("stop", "expected a string or a list of strings")


def is_streaming(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise invalid("stream", "expected a boolean")
    return stream


def include_usage(body: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: send a last chunk with usage (and empty choices)."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise invalid("stream_options", "expected an object")
    flag = opts.get("include_usage", False)
    if not isinstance(flag, bool):
        raise invalid("stream_options.include_usage", "expected a boolean")
    return flag


def _sampling(body: dict[str, Any], max_tokens_fields: tuple[str, ...]) -> SamplingOptions:
    kw: dict[str, Any] = {}
    for name in max_tokens_fields:
        value = _integer(body, name)
        if value is not None:
            kw["max_tokens"] = value
    for name in _FLOAT_FIELDS:
        number = _number(body, name)
        if number is not None:
            kw[name] = number
    for name in ("top_k", "seed"):
        value = _integer(body, name)
        if value is not None:
            kw[name] = max(0, value) if name == "top_k" else value  # OpenAI-style top_k -1 = off
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise invalid("ignore_eos", "expected a boolean")
    return SamplingOptions(stop=_stops(body), ignore_eos=ignore_eos, **kw)


def _common(body: dict[str, Any]) -> dict[str, Any]:
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise invalid("n", "only n=1 is supported")
    best_of = _integer(body, "best_of")
    if best_of is not None and best_of != 1:
        raise invalid("best_of", "only best_of=1 is supported")
    tier = body.get("tier", "auto")
    if tier not in ("auto", "edge", "center"):
        raise invalid("tier", "expected one of auto, edge, center")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model", "expected a string")
    user = body.get("user")  # OpenAI's end-user id: keeps the user on one A/B variant
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise invalid("user", "expected a string of at most 256 characters")
    return {"tier": tier, "user": user or None}


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: text only
        texts = []
        for j, part in enumerate(value):
            is_text = isinstance(part, dict) and part.get("type") == "text"
            if not is_text or not isinstance(part.get("text"), str):
                raise invalid(f"{where}[{j}]", "only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    if value is None:
        return ""
    raise invalid(where, "expected a string or a list of text parts")


def _messages(body: dict[str, Any]) -> list[ChatMessage]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise invalid("messages", "expected a non-empty list of messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}]", "expected an object")
        raw_role = m.get("role")
        role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise invalid(f"messages[{i}].role", "expected system, developer, user or assistant")
        out.append(ChatMessage(role=role, content=_content(m.get("content"), f"messages[{i}].content")))
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise invalid("prompt", "exactly one prompt string is supported (no batches, no token ids)")
    if not isinstance(prompt, str):
        raise invalid("prompt", "expected a string")
    return prompt


def _check_fields(body: dict[str, Any], *, is_chat: bool) -> None:
    found = unsupported_field(body, is_chat=is_chat)
    if found is not None:
        param, problem = found
        raise OpenAIError(400, f"{param}: {problem}", param=param, code="unsupported_parameter")


Precheck = Callable[[GenerateRequest], None]


def _finish(
    req: GenerateRequest, body: dict[str, Any], is_chat: bool, precheck: Precheck | None
) -> GenerateRequest:
    try:
        if precheck is not None:
            precheck(req)  # e.g. refuse a prompt too long by its size before the costlier validate
        validate(req)
    except ProtocolError as exc:
        err = error_from_protocol(exc.code, exc.message, is_chat=is_chat)
        if err.param == "max_tokens" and "max_tokens" not in body:
            err.param = "max_completion_tokens"  # the name the client used
        raise err from None
    return req


def parse_chat(body: Any, api_key: str | None, precheck: Precheck | None = None) -> GenerateRequest:
    """A `/v1/chat/completions` body -> GenerateRequest (raises OpenAIError).

    `precheck(req)` may raise `ProtocolError` before the request is validated.
    """
    if not isinstance(body, dict):
        raise invalid(None, "request body: expected a JSON object")
    _check_fields(body, is_chat=True)
    req = GenerateRequest(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        messages=_messages(body),
        sampling=_sampling(body, ("max_tokens", "max_completion_tokens")),
        api_key=api_key,
        **_common(body),
    )
    return _finish(req, body, True, precheck)


def parse_completion(body: Any, api_key: str | None, precheck: Precheck | None = None) -> GenerateRequest:
    """A `/v1/completions` body -> GenerateRequest (raises OpenAIError); `precheck` as in parse_chat."""
    if not isinstance(body, dict):
        raise invalid(None, "request body: expected a JSON object")
    _check_fields(body, is_chat=False)
    if body.get("echo"):
        raise invalid("echo", "echo is not supported")
    req = GenerateRequest(
        id=f"cmpl-{uuid.uuid4().hex}",
        prompt=_prompt(body),
        sampling=_sampling(body, ("max_tokens",)),
        api_key=api_key,
        **_common(body),
    )
    return _finish(req, body, False, precheck)
