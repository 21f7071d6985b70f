"""Chat templates rendered the way Hugging Face transformers renders them.

Same Jinja environment (sandboxed, trim_blocks, lstrip_blocks, loopcontrols), same helpers
(`raise_exception`, `strftime_now`, a `tojson` filter that does not HTML-escape) and the same
variables (`messages`, `tools`, `documents`, `add_generation_prompt`, the special tokens), so a
template from a model's tokenizer_config.json gives byte-identical prompts here and in transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError, TokenizerError


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes; transformers replaces it with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template once (cached by its source text)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def _plain(value: Any) -> Any:
    # The template only sees plain JSON-like data (as in transformers), never caller objects.
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    raise TokenizerError(f"unsupported value in chat message: {type(value).__name__}")


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Turn messages (dicts, or objects with `role`/`content` such as protocol ChatMessage) into dicts.

    Raises TokenizerError when a message has no string role or no content.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TokenizerError("messages must be a list of {role, content} messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if isinstance(msg, Mapping):
            plain = _plain(msg)
        elif hasattr(msg, "role") and hasattr(msg, "content"):
            plain = {"role": _plain(msg.role), "content": _plain(msg.content)}
        else:
            raise TokenizerError(f"message {i} is not a {{role, content}} mapping")
        if not isinstance(plain.get("role"), str):
            raise TokenizerError(f"message {i} has no string 'role'")
        if "content" not in plain:
            raise TokenizerError(f"message {i} has no 'content'")
        out.append(plain)
    return out


def render_chat_template(
    source: str,
    messages: Sequence[Any],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render `source` for `messages` as transformers' `apply_chat_template(tokenize=False)` does.

    `special_tokens` (bos_token, eos_token, ...) become template variables; `kwargs` override them
    and are passed through as extra variables.
    """
    template = compile_template(source)
    variables: dict[str, Any] = {**(special_tokens or {}), **{k: _plain(v) for k, v in kwargs.items()}}
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    try:
        return template.render(
            messages=normalize_messages(messages),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
