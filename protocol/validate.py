"""Cross-field rules that msgspec's per-field constraints cannot express.

`check_message(msg)` runs on every decoded message. It raises only `ProtocolError`, and its
messages start with the offending field (``"prompt_ids: ..."``).
"""

from __future__ import annotations

from . import limits as L
from .errors import ErrorCode, ProtocolError
from .ids import check_ids
from .messages import (
    Continuation,
    GenerateRequest,
    Message,
    Migrated,
    SamplingOptions,
    Status,
    StatusRequest,
    TokenChunk,
)
from .version import check_version


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def _too_long(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.PROMPT_TOO_LONG, message)


def check_message(msg: Message) -> None:
    """Raise `ProtocolError` if `msg` breaks a rule that spans fields."""
    if isinstance(msg, GenerateRequest):
        _check_generate(msg)
    elif isinstance(msg, TokenChunk):
        check_ids(msg.token_ids, "token_ids")
    elif isinstance(msg, (Status, StatusRequest)):
        check_version(msg.version)
    elif isinstance(msg, Migrated):
        _check_prompt_ids(msg.prompt_ids)
        _check_sampling(msg.sampling)
        _check_continuation(msg.continuation)


def _check_generate(req: GenerateRequest) -> None:
    check_version(req.version)
    forms = [name for name in ("prompt", "messages", "prompt_ids") if getattr(req, name) is not None]
    if len(forms) != 1:
        given = ", ".join(forms) if forms else "none"
        raise _invalid(f"prompt: exactly one of prompt, messages, prompt_ids must be set (got {given})")
    if req.prompt is not None:
        _check_prompt(req.prompt)
    elif req.messages is not None:
        _check_messages(req)
    elif req.prompt_ids is not None:
        _check_prompt_ids(req.prompt_ids)
    _check_sampling(req.sampling)
    if req.continuation is not None:
        _check_continuation(req.continuation)


def _check_prompt(prompt: str) -> None:
    if not prompt:
        raise _invalid("prompt: must not be empty")
    if len(prompt) > L.MAX_PROMPT_CHARS:
        raise _too_long(f"prompt: {len(prompt)} chars exceeds the limit of {L.MAX_PROMPT_CHARS}")


def _check_messages(req: GenerateRequest) -> None:
    messages = req.messages or []
    if not messages:
        raise _invalid("messages: must not be empty")
    if len(messages) > L.MAX_MESSAGES:
        raise _too_long(f"messages: {len(messages)} messages exceeds the limit of {L.MAX_MESSAGES}")
    total = 0
    for i, message in enumerate(messages):
        n = len(message.content)
        if n > L.MAX_MESSAGE_CHARS:
            raise _too_long(f"messages[{i}].content: {n} chars exceeds the limit of {L.MAX_MESSAGE_CHARS}")
        total += n
    if total > L.MAX_PROMPT_CHARS:
        raise _too_long(f"messages: {total} chars in all exceeds the limit of {L.MAX_PROMPT_CHARS}")


def _check_prompt_ids(prompt_ids: bytes) -> None:
    n = check_ids(prompt_ids, "prompt_ids")
    if n == 0:
        raise _invalid("prompt_ids: must not be empty")
    if n > L.MAX_PROMPT_TOKENS:
        raise _too_long(f"prompt_ids: {n} tokens exceeds the limit of {L.MAX_PROMPT_TOKENS}")


def _check_sampling(sampling: SamplingOptions) -> None:
    check_ids(sampling.stop_token_ids, "sampling.stop_token_ids")


def _check_continuation(cont: Continuation) -> None:
    n = check_ids(cont.token_ids, "continuation.token_ids")
    if n and not cont.tokenizer_fingerprint:
        raise _invalid("continuation.token_ids: set without continuation.tokenizer_fingerprint")
