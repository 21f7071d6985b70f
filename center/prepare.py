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

from isthmus.center.request import PreparedRequest, PromptTokenizer, prepare_request
from isthmus.protocol import ErrorCode, GenerateRequest, ProtocolError
from isthmus.tokenizer.offload import TokenizerThreads, size_beyond

INLINE_MAX_BYTES = 4096  # bytes of prompt text prepared on the event loop
MAX_WORKERS = 2  # tokenizer threads per center
MAX_PENDING = 64  # large prompts being prepared or waiting at once; more get OVERLOADED


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


class RequestPreparer(TokenizerThreads):
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
        super().__init__(inline_max_bytes=inline_max_bytes, max_workers=max_workers, max_pending=max_pending,
                         thread_name="center-tokenize")
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    async def prepare(self, req: GenerateRequest) -> PreparedRequest:
        """Prompt ids and params for ``req``; `ProtocolError` for what cannot run (see module doc)."""
        self._check_bound(req)
        return await self.run(self.is_small(_all_texts(req)), "prompt", prepare_request, req, self.tokenizer,
                              self.max_model_len)

    def _check_bound(self, req: GenerateRequest) -> None:
        """PROMPT_TOO_LONG when the verbatim text's size alone proves it cannot fit."""
        bound = getattr(self.tokenizer, "min_num_tokens", None)
        limit = self.max_model_len
        if limit is None or not callable(bound):
            return
        texts = _verbatim_texts(req, getattr(self.tokenizer, "fingerprint", ""))
        num_ids = len(req.prompt_ids or b"") // 4  # packed int32
        # the prompt must leave room for one generated token: num_ids + tokens < limit
        size = size_beyond(texts, bound, limit - 1 - num_ids, self.inline_max_bytes)
        if size is not None:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt: {size} cannot fit in max_model_len {limit} tokens with room to generate",
            )
