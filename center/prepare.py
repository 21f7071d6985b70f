"""Prepare a Generate's prompt without stalling the center's event loop.

Tokenizing (and chat-templating) a 1M-character prompt takes seconds; on the loop it froze every
other call, `Status` included. So, for each request:

1. the length is checked by bytes first: when the UTF-8 size of the text that is tokenized as it
   is (prompt, continuation text) alone proves more tokens than ``max_model_len`` allows
   (`tokenizer.min_num_tokens`), the request is refused with PROMPT_TOO_LONG before any tokenizing;
   the character count, a lower bound on the bytes, is tried first so a huge text is not even
   encoded to UTF-8 to be refused;
2. small inputs (up to `inline_max_bytes`) are prepared on the loop: a thread hop costs more;
3. larger ones are prepared (`prepare_request`: chat template, tokenizing, checks) in a small
   thread pool. The tokenizer's Rust core releases the GIL for long texts and the template is
   Python that yields the GIL every switch interval, so the loop keeps running. At most
   `max_pending` such jobs wait at once; past that a request gets a retryable OVERLOADED.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from isthmus.center.request import PreparedRequest, PromptTokenizer, prepare_request
from isthmus.protocol import ErrorCode, GenerateRequest, ProtocolError

INLINE_MAX_BYTES = 4096  # bytes of prompt text prepared on the event loop
MAX_WORKERS = 2  # tokenizer threads per center
MAX_PENDING = 64  # large prompts being prepared or waiting at once; more get OVERLOADED
MAX_CHAR_BYTES = 4  # bytes: the longest UTF-8 character


def _verbatim_texts(req: GenerateRequest, fingerprint: str) -> list[str]:
    """Texts whose every byte reaches the tokenizer as it is (a chat template may drop text)."""
    if req.messages is not None:
        return []
    cont = req.continuation
    exact = bool(cont and cont.token_ids and cont.tokenizer_fingerprint == fingerprint)
    tail = [cont.text] if cont is not None and cont.text and not exact else []
    return ([req.prompt] if req.prompt is not None else []) + tail


def _all_texts(req: GenerateRequest) -> list[str]:
    texts = [req.prompt or ""] + [m.content for m in req.messages or []]
    if req.continuation is not None:
        texts.append(req.continuation.text)
    return texts


def _utf8_len(texts: list[str]) -> int:
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)


class RequestPreparer:
    """Runs `prepare_request` on the loop or in its worker threads (see the module doc)."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        max_model_len: int | None,
        *,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        max_workers: int = MAX_WORKERS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.inline_max_bytes = inline_max_bytes
        self.max_pending = max_pending
        self.num_pending = 0
        self.num_offloaded = 0  # requests prepared in a worker thread (tests, metrics)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="center-tokenize")

    def close(self) -> None:
        """Stop the worker threads once their current jobs end (idempotent)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, req: GenerateRequest) -> PreparedRequest:
        """Prompt ids and params for ``req``; `ProtocolError` for what cannot run (see module doc)."""
        self._check_bound(req)
        if self._is_small(_all_texts(req)):
            return prepare_request(req, self.tokenizer, self.max_model_len)
        if self.num_pending >= self.max_pending:
            busy = f"prompt: {self.num_pending} large prompts are already being prepared"
            raise ProtocolError(ErrorCode.OVERLOADED, busy, retryable=True)
        self.num_pending += 1
        self.num_offloaded += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, prepare_request, req, self.tokenizer, self.max_model_len
            )
        finally:
            self.num_pending -= 1

    def _check_bound(self, req: GenerateRequest) -> None:
        """PROMPT_TOO_LONG when the verbatim text's size alone proves it cannot fit."""
        bound = getattr(self.tokenizer, "min_num_tokens", None)
        limit = self.max_model_len
        if limit is None or not callable(bound):
            return
        texts = _verbatim_texts(req, getattr(self.tokenizer, "fingerprint", ""))
        num_ids = len(req.prompt_ids or b"") // 4  # packed int32
        num_chars = sum(len(t) for t in texts)
        if num_ids + bound(num_chars) >= limit:  # chars <= bytes: no need to encode to know
            raise self._too_long(f"{num_chars} characters", limit)
        if num_chars * MAX_CHAR_BYTES <= self.inline_max_bytes:
            return  # small: not worth encoding to count bytes
        num_bytes = _utf8_len(texts)
        if num_ids + bound(num_bytes) >= limit:
            raise self._too_long(f"{num_bytes} bytes", limit)

    @staticmethod
    def _too_long(size: str, limit: int) -> ProtocolError:
        return ProtocolError(
            ErrorCode.PROMPT_TOO_LONG,
            f"prompt: {size} cannot fit in max_model_len {limit} tokens with room to generate",
        )

    def _is_small(self, texts: list[str]) -> bool:
        num_chars = sum(len(t) for t in texts)
        if num_chars > self.inline_max_bytes:
            return False
        if num_chars * MAX_CHAR_BYTES <= self.inline_max_bytes:
            return True
        return _utf8_len(texts) <= self.inline_max_bytes
