"""Streaming detokenization: one token id in, a text delta out.

Decoding a token alone is wrong in two ways: a multi-byte UTF-8 character may be split over several
byte-level tokens (decoding half of it gives U+FFFD), and sentencepiece-style (Metaspace) decoders
drop the leading space of whatever comes first. So, like vLLM, we decode a short window: the
already-emitted tokens from `prefix_offset` serve as context, and the delta is the window's text
minus the context's text. The window is emitted-context plus pending tokens, so each push costs
O(window), not O(sequence).

Byte-level BPE tokenizers (DeepSeek's, GPT-2's) take a fast path instead: each id maps to its
bytes once per tokenizer (`byte_level.byte_table`) and an incremental UTF-8 decoder turns them into
text, so a push makes no `tokenizers` call at all.

In the window path, text is held back while the window ends in U+FFFD (an incomplete character)
and, for sentencepiece ByteFallback decoders, while a run of `<0xNN>` tokens is open, because
HF's ByteFallback turns a whole run into U+FFFDs when any byte in it is invalid. Long invalid
stretches are released once later bytes can no longer change them, so the window stays bounded.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from .byte_level import ByteTable, byte_table
from .hf import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
NUM_CONTEXT_TOKENS = 5  # prompt tokens decoded as context before the first generated token
MAX_PENDING_TOKENS = 8  # past this many held tokens, release what later bytes can no longer change
MAX_UTF8_TAIL = 3  # bytes: an incomplete UTF-8 character has at most 3 bytes
MAX_BYTE_RUN_TOKENS = 256  # held <0xNN> tokens before we emit anyway (see _is_in_byte_run)


class IncrementalDetokenizer:
    """Turn a stream of token ids into text deltas.

    Invariant: the concatenation of everything `push` and `flush` return equals
    `tokenizer.decode(token_ids)` (with `prefix_ids`: the decode of prefix+token_ids minus the decode
    of the prefix), and no delta ends in half of a multi-byte character.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        skip_special_tokens: bool = True,
        prefix_ids: Sequence[int] | None = None,
        *,
        byte_level: bool = True,
    ):
        """`prefix_ids`: tokens before the first pushed one (e.g. the prompt), used only as context.
        `byte_level=False` forces the window path (tests and benchmarks compare the two)."""
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        context = list(prefix_ids or [])[-NUM_CONTEXT_TOKENS:]
        self._table = _fast_table(tokenizer, context, skip_special_tokens) if byte_level else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        # _ids = context + generated; offsets index into it and only move forward.
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        window = self._table is None  # the byte-level path never decodes the context
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset) if window else ""
        self._chunks: list[str] = []
        self._generated: list[int] = []

    @property
    def is_byte_level(self) -> bool:
        """True when pushes take the byte-level fast path (no decode call per token)."""
        return self._table is not None

    @property
    def token_ids(self) -> list[int]:
        """All pushed ids (context excluded)."""
        return list(self._generated)

    @property
    def num_window_tokens(self) -> int:
        """Tokens kept for decoding (context + pending); stays small however long the stream."""
        return len(self._ids)

    @property
    def text(self) -> str:
        """Text emitted so far."""
        return "".join(self._chunks)

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip_special)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly "")."""
        self._tokenizer.check_ids([token_id])  # a bad id must not poison the window
        self._generated.append(token_id)
        if self._table is not None:
            return self._push_bytes(self._table, token_id)
        self._ids.append(token_id)
        if self._is_in_byte_run():
            return ""
        new_text = self._decode(self._prefix_offset, len(self._ids))
        if len(new_text) > len(self._prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            return self._emit(new_text, len(self._ids))
        if len(self._ids) - self._read_offset > MAX_PENDING_TOKENS:
            return self._release_stable(new_text)
        return ""

    def _push_bytes(self, table: ByteTable, token_id: int) -> str:
        # tokenizers decodes an added token apart from the bytes around it (see byte_level): the
        # UTF-8 decoder ends there (an incomplete character becomes U+FFFD) and starts afresh.
        text = table.added.get(token_id)
        if text is None:
            delta = self._utf8.decode(table.pieces[token_id])
        elif self._skip_special and self._tokenizer.is_special_id(token_id):
            return ""
        else:
            delta = self._utf8.decode(b"", True) + text
            self._utf8.reset()
        if delta:
            self._chunks.append(delta)
        return delta

    def _is_in_byte_run(self) -> bool:
        # HF's ByteFallback decoder turns a whole run of <0xNN> tokens into U+FFFDs when any byte
        # of the run is invalid, so a later byte can rewrite text we would already have emitted.
        # Hold the run until a normal token ends it (capped, so the window stays bounded).
        fallback = self._tokenizer.byte_fallback_ids
        num_pending = len(self._ids) - self._read_offset
        if not fallback or num_pending > MAX_BYTE_RUN_TOKENS:
            return False
        for token_id in reversed(self._ids[self._read_offset :]):
            if not (self._skip_special and self._tokenizer.is_special_id(token_id)):
                return token_id in fallback
        return False

    def _emit(self, window_text: str, end: int) -> str:
        delta = window_text[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, end
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        self._trim()
        self._chunks.append(delta)
        return delta

    def _release_stable(self, new_text: str) -> str:
        # A long run of invalid bytes keeps the window ending in U+FFFD. Text before the last
        # MAX_UTF8_TAIL byte-carrying tokens cannot change any more, so emit it and slide on.
        end, num_tail = len(self._ids), 0
        while end > self._read_offset and num_tail < MAX_UTF8_TAIL:
            end -= 1
            if not (self._skip_special and self._tokenizer.is_special_id(self._ids[end])):
                num_tail += 1
        stable = self._decode(self._prefix_offset, end)
        if num_tail == MAX_UTF8_TAIL and len(stable) > len(self._prefix_text) and new_text.startswith(stable):
            return self._emit(stable, end)
        return ""

    def _trim(self) -> None:
        # Tokens before prefix_offset are never decoded again; dropping them keeps memory O(window).
        if self._prefix_offset > 0:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0

    def flush(self) -> str:
        """Emit whatever is held back (e.g. an incomplete character at the very end, as U+FFFD)."""
        if self._table is not None:
            delta = self._utf8.decode(b"", True)
            if delta:
                self._chunks.append(delta)
            return delta
        new_text = self._decode(self._prefix_offset, len(self._ids))
        if len(new_text) <= len(self._prefix_text):
            return ""
        return self._emit(new_text, len(self._ids))


def _fast_table(tokenizer: Tokenizer, context: list[int], skip_special: bool) -> ByteTable | None:
    """The byte table when the fast path applies: a byte-level tokenizer, and a prompt context
    that ends on a character boundary (else the window path keeps today's context handling)."""
    table = byte_table(tokenizer)
    if table is None or not context:
        return table
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    for token_id in tokenizer.check_ids(context):
        if skip_special and tokenizer.is_special_id(token_id):
            continue
        if token_id in table.added:
            utf8.reset()
        else:
            utf8.decode(table.pieces[token_id])
    return table if utf8.getstate()[0] == b"" else None
