"""Turn a request's prompt into token ids without stalling the event loop.

Tokenizing a 1M-character prompt takes seconds; done on the loop it froze every other request and
`/healthz`. So, for each request:

1. the length is checked by bytes first: a text whose UTF-8 length alone proves it has more tokens
   than the limit (`tokenizer.min_num_tokens`) is refused at once with `PROMPT_TOO_LONG`, before
   any tokenizing (its character count is a lower bound on its bytes, so a huge text is refused
   without even being encoded to UTF-8);
2. small texts (up to `inline_max_bytes`) are tokenized on the loop: a thread hop costs more;
3. larger ones, and chat templating of large conversations, run in a small thread pool. The
   tokenizer's Rust core releases the GIL for long texts, so the loop keeps running meanwhile.
   At most `max_pending` such jobs wait at once; past that the request gets a retryable
   `OVERLOADED` instead of queueing without bound.

Bad client input (token ids outside the vocabulary, a conversation the chat template refuses)
is `INVALID_MESSAGE` naming the field, never an internal error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from isthmus.protocol import ErrorCode, GenerateRequest, ProtocolError, unpack_ids
from isthmus.tokenizer.offload import TokenizerThreads, size_beyond

from .seams import EdgeTokenizer

T = TypeVar("T")

INLINE_MAX_BYTES = 2048  # bytes: texts up to this are tokenized on the event loop
MAX_WORKERS = 2  # tokenizer threads per edge
MAX_PENDING = 256  # tokenizer jobs queued or running at once; more are refused (OVERLOADED)
MAX_FEATURE_IDS = 8192  # tokens of a `prompt_ids` prompt decoded for the router's features


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """A request's prompt as the engine sees it, plus what the router's features read."""

    ids: list[int]
    text: str
    num_turns: int


def _too_long(field: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.PROMPT_TOO_LONG, f"{field}: {message}")


class PromptTokenizer(TokenizerThreads):
    """Tokenizes requests for one tokenizer; owns the worker threads (see the module doc)."""

    def __init__(
        self,
        tokenizer: EdgeTokenizer,
        *,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        max_workers: int = MAX_WORKERS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        super().__init__(inline_max_bytes=inline_max_bytes, max_workers=max_workers, max_pending=max_pending,
                         thread_name="isthmus-tokenize")
        self.tokenizer = tokenizer

    def refuse_oversized(self, req: GenerateRequest, limit: int | None) -> None:
        """Refuse a plain `prompt` whose size alone proves it too long (`ProtocolError`).

        Cheap, and safe on a request not yet validated: call it before the full validation round
        trip, which costs milliseconds per megabyte. (A conversation's size says nothing certain
        before its template is rendered: a template may leave text out.)
        """
        if isinstance(req.prompt, str):
            self._check_text(req.prompt, limit, "prompt")

    async def tokenize(self, req: GenerateRequest, limit: int | None, fingerprint: str = "") -> PromptTokens:
        """The prompt's ids; `ProtocolError` for too long (limit in tokens) or malformed input.

        `fingerprint` is this edge's tokenizer fingerprint: a continuation's token ids are used
        only when they were made by the same tokenizer.
        """
        if req.prompt is not None:
            self._check_text(req.prompt, limit, "prompt")
            ids = await self._encode(req.prompt, True, "prompt")
            out = PromptTokens(ids, req.prompt, 1)
        elif req.messages is not None:
            out = await self._chat(req, limit)
        else:
            out = self._prompt_ids(req.prompt_ids or b"", limit)
        ids = out.ids
        if req.continuation is not None:  # an app may resume an answer itself: continue after it
            cont = req.continuation
            if cont.token_ids and cont.tokenizer_fingerprint == fingerprint:
                ids = ids + self._checked_ids(unpack_ids(cont.token_ids), "continuation.token_ids")
            elif cont.text:
                left = None if limit is None else max(0, limit - len(ids))
                self._check_text(cont.text, left, "continuation.text", "tokens left under the edge's limit")
                ids = ids + await self._encode(cont.text, False, "continuation.text")
        if limit is not None and len(ids) > limit:
            field = "messages" if req.messages is not None else "prompt"
            raise _too_long(field, f"{len(ids)} tokens exceeds the edge's limit of {limit}")
        return PromptTokens(ids, out.text, out.num_turns)

    # --- the three prompt forms ------------------------------------------------------------------
    async def _chat(self, req: GenerateRequest, limit: int | None) -> PromptTokens:
        messages = req.messages or []
        plain = [{"role": m.role, "content": m.content} for m in messages]
        text = "\n".join(m.content for m in messages)
        turns = max(1, sum(1 for m in messages if m.role == "user"))
        tok = self.tokenizer
        template = getattr(tok, "apply_chat_template", None)
        if not callable(template):  # a tokenizer without templates
            ids = await self._run(self.is_small([text]), "messages", tok.encode_chat, plain)
            return PromptTokens(ids, text, turns)
        rendered = await self._run(self.is_small([text]), "messages", template, plain)
        self._check_text(rendered, limit, "messages")
        return PromptTokens(await self._encode(rendered, False, "messages"), text, turns)

    def _prompt_ids(self, packed: bytes, limit: int | None) -> PromptTokens:
        ids = unpack_ids(packed)
        if limit is not None and len(ids) > limit:  # known before anything is decoded
            raise _too_long("prompt_ids", f"{len(ids)} tokens exceeds the edge's limit of {limit}")
        ids = self._checked_ids(ids, "prompt_ids")
        # the router's features scan only the head of a prompt: decode no more than that
        head = ids[:MAX_FEATURE_IDS]
        try:
            text = self.tokenizer.decode(head)
        except ValueError as exc:  # TokenizerError: ids the tokenizer cannot decode
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"prompt_ids: {exc}") from None
        return PromptTokens(ids, text, 1)

    # --- helpers ---------------------------------------------------------------------------------
    def _checked_ids(self, ids: list[int], field: str) -> list[int]:
        size = getattr(self.tokenizer, "vocab_size", None)
        if ids and isinstance(size, int):
            low, high = min(ids), max(ids)  # C loops: cheap even for 128k ids
            if low < 0 or high >= size:
                bad = low if low < 0 else high
                message = f"{field}: token id {bad} is outside the vocabulary [0, {size})"
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, message)
        return ids

    def _check_text(
        self, text: str, limit: int | None, field: str, what: str = "tokens, the edge's limit"
    ) -> None:
        """Refuse `text` when its size alone proves it has more than `limit` tokens."""
        bound = getattr(self.tokenizer, "min_num_tokens", None)
        if limit is None or not callable(bound):
            return
        size = size_beyond([text], bound, limit, self.inline_max_bytes)
        if size is not None:
            raise _too_long(field, f"{size} are more than {limit} {what}")

    async def _encode(self, text: str, add_special_tokens: bool, field: str) -> list[int]:
        encode = functools.partial(self.tokenizer.encode, add_special_tokens=add_special_tokens)
        return await self._run(self.is_small([text]), field, encode, text)

    async def _run(self, is_small: bool, field: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the loop when its input `is_small`, else in a worker thread.

        A tokenizer's refusal of the input (TokenizerError, a ValueError) is the client's fault.
        """
        try:
            return await self.run(is_small, field, fn, *args)
        except ProtocolError:
            raise
        except ValueError as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{field}: {exc}") from None
