"""Which request fields the OpenAI-compatible API accepts (sans-IO).

A field this edge does not implement is refused with a 400 naming it, never silently ignored:
a client that asks for tools, a JSON response format, logit biases or logprobs and gets plain text
with a 200 has been misled. OpenAI's own API refuses unknown arguments too ("Unrecognized request
argument supplied"). Fields whose value asks for nothing beyond the default (`"logprobs": false`,
`"tools": []`, `"response_format": {"type": "text"}`) are accepted, since SDKs and frameworks send
them routinely.
"""

from __future__ import annotations

from typing import Any

# read by the parser (openai_schema), OpenAI's and the extensions (vLLM's names)
_COMMON = frozenset({
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop",
    "presence_penalty", "frequency_penalty", "seed",
    "tier", "top_k", "min_p", "repetition_penalty", "ignore_eos",
})
_CHAT = _COMMON | {"messages", "max_completion_tokens"}
_COMPLETION = _COMMON | {"prompt", "best_of", "echo"}

# OpenAI fields that change nothing here: identification, storage and routing hints
_HARMLESS = frozenset({"user", "service_tier", "metadata", "store", "parallel_tool_calls"})


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {} or value == ""


# OpenAI fields not implemented here: accepted only with a value that asks for nothing
_DEFAULT_ONLY: dict[str, Any] = {
    "logprobs": _is_off,
    "top_logprobs": _is_off,
    "logit_bias": _is_off,
    "tools": _is_off,
    "functions": _is_off,
    "tool_choice": lambda v: v is None or v == "none",
    "function_call": lambda v: v is None or v == "none",
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
    "suffix": _is_off,
    "reasoning_effort": lambda v: v is None,
    "prediction": lambda v: v is None,
    "audio": lambda v: v is None,
    "web_search_options": lambda v: v is None,
}

_MESSAGE_FIELDS = frozenset({"role", "content", "name"})


def unsupported_field(body: dict[str, Any], *, is_chat: bool) -> tuple[str, str] | None:
    """The first field this edge would otherwise ignore, and why; None when there is none."""
    known = _CHAT if is_chat else _COMPLETION
    for name, value in body.items():
        if name in known or name in _HARMLESS:
            continue
        is_default = _DEFAULT_ONLY.get(name)
        if is_default is None:
            return str(name), "unrecognized request argument"
        if not is_default(value):
            return str(name), "not supported by this server"
    messages = body.get("messages") if is_chat else None
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                continue  # the parser names it
            for name, value in message.items():
                if name not in _MESSAGE_FIELDS and value is not None:
                    return f"messages[{i}].{name}", "not supported by this server (text messages only)"
    return None
