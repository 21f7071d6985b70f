"""Byte-level BPE tokens as bytes, for streaming detokenization without a decode call per token.

A byte-level BPE vocabulary (GPT-2, DeepSeek) spells every token in a 256-character alphabet that
stands for bytes, and its ByteLevel decoder maps the tokens back to bytes and decodes the whole as
UTF-8 (invalid bytes become U+FFFD). So a stream can be decoded by mapping each id to its bytes once
and feeding them to an incremental UTF-8 decoder: no `tokenizers` call per token.

`tokenizers` (0.23) decodes added tokens (the specials and e.g. `<think>`) apart from the bytes
around them: a character cannot span one, and an added token decodes to its own text. A table is
built only for tokenizers whose decoder is exactly ByteLevel over a BPE model without byte
fallback, and only after it reproduces `Tokenizer.decode` on a probe (valid text, invalid bytes,
added tokens inside a character); otherwise `byte_table` returns None and the caller decodes
windows of ids instead.
"""

from __future__ import annotations

import codecs
import weakref
from dataclasses import dataclass

from tokenizers import decoders, models

from .hf import Tokenizer

PROBE_TEXT = "Byte-level: héllo wörld, 中文字符 and emoji 😀🎉👩‍💻, tabs\tand\nnewlines ∑x²."


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte -> the character that spells it in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    chars = {b: chr(b) for b in [*printable, *range(ord("®"), ord("ÿ") + 1)]}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_ALPHABET = _bytes_to_unicode()
# str.translate table: an alphabet character -> its byte (as a latin-1 character). Latin-1
# characters outside the alphabet map to one latin-1 cannot encode, so a token holding any
# character outside the alphabet fails to encode and falls back to its UTF-8 bytes, as tokenizers'
# ByteLevel decoder does.
_TO_BYTES: dict[int, str] = {ord(c): chr(b) for b, c in _ALPHABET.items()}
for _i in range(256):
    _TO_BYTES.setdefault(_i, "\uffff")


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level vocabulary entry stands for."""
    try:
        return token.translate(_TO_BYTES).encode("latin-1")
    except UnicodeEncodeError:
        return token.encode("utf-8")


@dataclass(frozen=True, slots=True)
class ByteTable:
    """Per id: the bytes of a vocabulary token, or (`added`) the text of an added token."""

    pieces: list[bytes]  # [vocab_size]; b"" for added tokens and ids with no token
    added: dict[int, str]  # added token id -> its text


def stream_decode(table: ByteTable, tokenizer: Tokenizer, ids: list[int], skip_special: bool) -> str:
    """What streaming `ids` through the table gives (what IncrementalDetokenizer emits)."""
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    out = []
    for i in ids:
        text = table.added.get(i)
        if text is None:
            out.append(utf8.decode(table.pieces[i]))
        elif not (skip_special and tokenizer.is_special_id(i)):
            out.append(utf8.decode(b"", True) + text)
            utf8.reset()
    out.append(utf8.decode(b"", True))
    return "".join(out)


def _build(tokenizer: Tokenizer) -> ByteTable | None:
    raw = tokenizer._tok
    model = raw.model
    if not isinstance(raw.decoder, decoders.ByteLevel) or not isinstance(model, models.BPE):
        return None
    if model.byte_fallback or tokenizer.byte_fallback_ids:
        return None
    pieces = [b""] * tokenizer.vocab_size
    for token, i in raw.get_vocab(with_added_tokens=False).items():
        if 0 <= i < len(pieces):
            pieces[i] = token_bytes(token)
    added = {}
    for i in raw.get_added_tokens_decoder():
        if 0 <= i < len(pieces):
            pieces[i] = b""
            added[i] = tokenizer.decode([i], skip_special_tokens=False)
    table = ByteTable(pieces, added)
    return table if _reproduces_decode(table, tokenizer) else None


def _reproduces_decode(table: ByteTable, tokenizer: Tokenizer) -> bool:
    """Whether the table streams the probe exactly as `Tokenizer.decode` decodes it."""
    text_ids = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    bytes_ids = {p[0]: i for i, p in enumerate(table.pieces) if len(p) == 1}
    # "中" as one token per byte (in every byte-level vocabulary), then split by added tokens.
    split = [i for i in (bytes_ids.get(b) for b in "中".encode()) if i is not None]
    probes = [text_ids, [*text_ids[:3], *split]]
    if len(split) == 3:
        for added_id in list(table.added)[:8]:  # an added token inside a character, invalid bytes
            probes.append([split[0], added_id, *split[1:], split[2], *text_ids[:4], added_id])
    for ids in probes:
        for skip in (True, False):
            if stream_decode(table, tokenizer, ids, skip) != tokenizer.decode(ids, skip_special_tokens=skip):
                return False
    return True


_TABLES: weakref.WeakKeyDictionary[Tokenizer, ByteTable | None] = weakref.WeakKeyDictionary()


def byte_table(tokenizer: Tokenizer) -> ByteTable | None:
    """The tokenizer's byte table (built once per tokenizer), or None if it is not plain byte-level."""
    try:
        return _TABLES[tokenizer]
    except KeyError:
        table = _TABLES[tokenizer] = _build(tokenizer)
        return table
