"""Tokenizing large inputs off the event loop, and refusing huge ones by their size alone.

Both tiers tokenize requests on an asyncio loop, where a 1M-character prompt (seconds of work)
would freeze every other request. `TokenizerThreads` runs small inputs inline (a thread hop
costs more) and larger ones in a small thread pool: the tokenizer's Rust core releases the GIL
for long texts and a chat template is Python that yields it every switch interval, so the loop
keeps running. At most ``max_pending`` jobs wait at once; past that a request gets a retryable
OVERLOADED instead of queueing without bound.

`size_beyond` is the check before any of that: a text whose size alone proves more tokens than
allowed (`Tokenizer.min_num_tokens`, a lower bound from the byte count) is refused untokenized.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from isthmus.protocol import ErrorCode, ProtocolError

from .bounds import MAX_CHAR_BYTES

T = TypeVar("T")


def utf8_len(texts: Sequence[str]) -> int:
    """The texts' UTF-8 size in bytes (lone surrogates count as the 3 bytes they would take)."""
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)


def size_beyond(
    texts: Sequence[str], min_num_tokens: Callable[[int], int], max_tokens: int, cheap_max_bytes: int
) -> str | None:
    """"N characters" or "N bytes" when the texts' size alone proves more than ``max_tokens``
    tokens (``min_num_tokens(num_bytes)`` is a lower bound); None when their size does not.

    The character count, a lower bound on the bytes, is tried first so that a huge text is not
    even encoded to UTF-8 to be refused; texts of at most ``cheap_max_bytes`` bytes for certain
    are not encoded at all.
    """
    num_chars = sum(len(t) for t in texts)
    if min_num_tokens(num_chars) > max_tokens:
        return f"{num_chars} characters"
    if num_chars * MAX_CHAR_BYTES <= cheap_max_bytes:
        return None
    num_bytes = utf8_len(texts)
    if min_num_tokens(num_bytes) > max_tokens:
        return f"{num_bytes} bytes"
    return None


class TokenizerThreads:
    """Runs tokenizer calls inline or in its worker threads (see the module doc)."""

    def __init__(
        self, *, inline_max_bytes: int, max_workers: int, max_pending: int, thread_name: str
    ) -> None:
        self.inline_max_bytes = inline_max_bytes  # bytes of input run on the event loop
        self.max_pending = max_pending
        self.num_pending = 0
        self.num_offloaded = 0  # jobs that ran in a worker thread (for tests and metrics)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name)

    def close(self) -> None:
        """Stop the worker threads once their current jobs end (idempotent)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def is_small(self, texts: Sequence[str]) -> bool:
        """At most `inline_max_bytes` UTF-8 bytes in all (encoded only when the length leaves it open)."""
        num_chars = sum(len(t) for t in texts)
        if num_chars > self.inline_max_bytes:
            return False
        if num_chars * MAX_CHAR_BYTES <= self.inline_max_bytes:
            return True
        return utf8_len(texts) <= self.inline_max_bytes

    async def run(self, is_small: bool, busy: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the loop when its input `is_small`, else in a worker thread.

        Raises `ProtocolError(OVERLOADED)`, retryable, saying ``busy`` when `max_pending` jobs
        are already waiting.
        """
        if is_small:
            return fn(*args)
        if self.num_pending >= self.max_pending:
            raise ProtocolError(
                ErrorCode.OVERLOADED, f"{busy}: {self.num_pending} inputs are already being tokenized",
                retryable=True,
            )
        self.num_pending += 1
        self.num_offloaded += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.num_pending -= 1


__all__ = ["TokenizerThreads", "size_beyond", "utf8_len"]
