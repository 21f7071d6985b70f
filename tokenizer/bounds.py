"""A guaranteed lower bound on a text's token count from its UTF-8 byte length (sans-IO).

A server must refuse a prompt that cannot fit the model before spending seconds tokenizing it.
`max_bytes_per_token(spec, added)` reads a `tokenizer.json` (as a dict) and returns B such that
every token the tokenizer produces covers at most B bytes of the raw input text, so a text of
n bytes always has at least ceil(n / B) tokens. It returns None when no such bound holds: a
normalizer or pre-tokenizer that can delete text (Strip, WhitespaceSplit, a `Removed` split, a
regex Replace) or a model that folds a run of unknown characters into one token (WordPiece,
WordLevel, BPE with `fuse_unk` and no byte fallback). Callers then have no early refusal, only
the exact count after tokenizing.

How a token's coverage is counted:
- byte-level BPE: each character of a vocabulary entry stands for one byte;
- other models: an entry's UTF-8 length bounds what it covers (`▁` is 3 bytes for 1, `<0x41>` 6
  for 1), and an unknown character costs at most 4 bytes;
- added tokens match the raw text, so their content's UTF-8 length;
- normalizers may shrink the text before the model sees it, by a bounded factor: Unicode
  normalization composes at most 4 bytes into 1 (Hangul jamo: 9 into 3), lowercasing at most 3
  into 1 (U+212A KELVIN SIGN -> "k"), a literal Replace by len(pattern) / len(content).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

UNICODE_NORMALIZATION_SHRINK = 4  # raw bytes per normalized byte, at most (NFC, NFD, NFKC, NFKD)
LOWERCASE_SHRINK = 3  # raw bytes per lowercased byte, at most
MAX_CHAR_BYTES = 4  # bytes: the longest UTF-8 character

_UNICODE_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD"})
_KEEPING_BEHAVIOURS = frozenset({"Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"})
# pre-tokenizers that split or map text without dropping any of it
_KEEPING_PRE_TOKENIZERS = frozenset({"ByteLevel", "Digits", "Metaspace", "UnicodeScripts"})


def _normalizer_shrink(spec: Mapping[str, Any] | None) -> float | None:
    """How many raw bytes one normalized byte may stand for (None: unbounded)."""
    if spec is None:
        return 1.0
    kind = spec.get("type")
    if kind == "Sequence":
        total = 1.0
        for step in spec.get("normalizers") or []:
            shrink = _normalizer_shrink(step)
            if shrink is None:
                return None
            total *= shrink
        return total
    if kind in _UNICODE_NORMALIZERS:
        return float(UNICODE_NORMALIZATION_SHRINK)
    if kind == "Lowercase":
        return float(LOWERCASE_SHRINK)
    if kind == "Prepend":
        return 1.0
    if kind == "Replace":
        pattern = spec.get("pattern") or {}
        literal, content = pattern.get("String"), spec.get("content")
        if not isinstance(literal, str) or not isinstance(content, str) or not content:
            return None  # a regex, or a deletion: no bound
        return max(1.0, len(literal.encode("utf-8")) / len(content.encode("utf-8")))
    return None


def _pre_tokenizer_keeps_text(spec: Mapping[str, Any] | None) -> bool:
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_pre_tokenizer_keeps_text(step) for step in spec.get("pretokenizers") or [])
    if kind in ("Split", "Punctuation"):
        return spec.get("behavior", "Isolated") in _KEEPING_BEHAVIOURS
    return kind in _KEEPING_PRE_TOKENIZERS


def _is_byte_level(spec: Mapping[str, Any] | None) -> bool:
    if spec is None:
        return False
    if spec.get("type") == "Sequence":
        return any(_is_byte_level(step) for step in spec.get("pretokenizers") or [])
    return spec.get("type") == "ByteLevel"


def _model_max_bytes(model: Mapping[str, Any], is_byte_level: bool) -> int | None:
    """The most raw bytes one model token covers (None: unbounded)."""
    kind = model.get("type")
    vocab = model.get("vocab")
    if kind == "BPE" and isinstance(vocab, Mapping):
        entries: Iterable[str] = vocab.keys()
        if is_byte_level:
            return max((len(t) for t in entries), default=1)
        if model.get("unk_token") is not None and model.get("fuse_unk") and not model.get("byte_fallback"):
            return None
        longest = max((len(t.encode("utf-8")) for t in entries), default=1)
        return max(longest, MAX_CHAR_BYTES)
    if kind == "Unigram" and isinstance(vocab, list) and model.get("byte_fallback"):
        pieces = (p[0] for p in vocab if isinstance(p, list) and p and isinstance(p[0], str))
        return max(max((len(t.encode("utf-8")) for t in pieces), default=1), MAX_CHAR_BYTES)
    return None  # WordPiece / WordLevel / Unigram without byte fallback: unknown runs fold into one


def max_bytes_per_token(
    spec: Mapping[str, Any], added_tokens: Iterable[Mapping[str, Any]] = ()
) -> int | None:
    """At most how many raw input bytes one token covers, for a parsed `tokenizer.json`.

    `added_tokens` are extra tokens registered on top of the file (named special tokens), each as
    tokenizer.json writes one (`content`, `lstrip`, `rstrip`). None when the tokenizer can fold
    unboundedly many bytes into one token, drop text, or truncate its output.
    """
    shrink = _normalizer_shrink(spec.get("normalizer"))
    pre = spec.get("pre_tokenizer")
    model = spec.get("model")
    if shrink is None or not _pre_tokenizer_keeps_text(pre) or not isinstance(model, Mapping):
        return None
    if spec.get("truncation") is not None:
        return None
    model_bytes = _model_max_bytes(model, _is_byte_level(pre))
    if model_bytes is None:
        return None
    added = [t for t in spec.get("added_tokens") or [] if isinstance(t, Mapping)] + list(added_tokens)
    if any(t.get("lstrip") or t.get("rstrip") for t in added):
        return None  # such a token also swallows the whitespace beside it, however long
    contents = (t.get("content") for t in added)
    added_bytes = max((len(c.encode("utf-8")) for c in contents if isinstance(c, str)), default=1)
    return math.ceil(max(model_bytes, added_bytes) * shrink)


def min_num_tokens(num_bytes: int, bytes_per_token: int | None) -> int:
    """The fewest tokens a text of `num_bytes` UTF-8 bytes can become (0 when nothing is known)."""
    if bytes_per_token is None or num_bytes <= 0:
        return 0
    return -(-num_bytes // bytes_per_token)
