"""Script-agnostic hashed text features for the router (numpy only, vectorised, sans-IO).

A prompt becomes a sparse vector in a table of `num_buckets` slots:

- character n-grams (n = 1..4 by default) of the normalised text: work for any script, including
  Chinese and Japanese, which have no spaces between words;
- word unigrams and bigrams, where a word is a run of letters/digits (CJK ideographs and kana are
  left to the character n-grams);

each hashed with a fixed 64-bit mix (never Python's salted `hash`), so the same text lands in the
same slots in every process. A second hash bit gives each feature a sign, which keeps collisions
from biasing a weight (Weinberger et al., feature hashing). Counts are damped (log1p) and each block
is scaled to unit length, so a long prompt does not weigh more than a short one by size alone.

Hashing is done on whole arrays of code points, not per n-gram in Python: the cost per prompt is a
few tens of microseconds and grows only with `max_chars`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

import numpy as np

# Text normalisation: NFKC folds full-width forms (common in Chinese text) into ASCII; all digits
# read as 0 so that "17" and "42" share n-grams; whitespace runs collapse to one space.
_SPACES = re.compile(r"\s+")
_DIGITS = str.maketrans("123456789", "000000000")

_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser constants
_MIX2 = np.uint64(0x94D049BB133111EB)
_POLY = 0x9E3779B97F4A7C15  # odd multiplier of the polynomial word hash (invertible mod 2**64)
_POLY_INV = pow(_POLY, -1, 2**64)
_SALT_WORD1 = 0x51ED270B27D0A5C3
_SALT_WORD2 = 0x2545F4914F6CDD1D


@dataclass(frozen=True, slots=True)
class HashingConfig:
    """What a weights file was trained with; a file is refused when this differs from the code's."""

    num_buckets: int = 1 << 16  # slots per block (chars, words) of the hashed table (a power of 2)
    char_ngram_min: int = 1
    char_ngram_max: int = 4
    word_bigrams: bool = True
    max_head_chars: int = 2048  # chars of the prompt's head that are hashed
    max_tail_chars: int = 512  # and of its tail (an instruction often ends a long prompt)

    def __post_init__(self) -> None:
        if self.num_buckets < 2 or self.num_buckets & (self.num_buckets - 1):
            raise ValueError(f"num_buckets: expected a power of two >= 2, got {self.num_buckets}")
        if not 1 <= self.char_ngram_min <= self.char_ngram_max <= 8:
            raise ValueError("char n-gram range: expected 1 <= min <= max <= 8")
        if self.max_head_chars < 1 or self.max_tail_chars < 0:
            raise ValueError("max_head_chars/max_tail_chars: expected >= 1 / >= 0")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HashedText:
    """One prompt's hashed features: sorted unique slot `indices` and their `values`.

    `origins` maps each slot to the first n-gram that landed in it (for explanations only; filled
    when `with_origins` is asked for).
    """

    indices: np.ndarray  # [nnz] int64, sorted, unique
    values: np.ndarray  # [nnz] float32
    origins: dict[int, str] | None = None


def normalise(text: str, cfg: HashingConfig) -> str:
    """The text the n-grams are taken from: head and tail, NFKC, lower case, digits 0, spaces 1."""
    if len(text) > cfg.max_head_chars + cfg.max_tail_chars:
        tail = text[len(text) - cfg.max_tail_chars :] if cfg.max_tail_chars else ""
        text = text[: cfg.max_head_chars] + " " + tail
    text = unicodedata.normalize("NFKC", text).lower().translate(_DIGITS)
    return _SPACES.sub(" ", text).strip()


def codepoints(text: str) -> np.ndarray:
    """[len] uint64 code points (lone surrogates become '?')."""
    raw = text.encode("utf-32-le", errors="replace")
    return np.frombuffer(raw, dtype="<u4").astype(np.uint64)


def hash_text(text: str, cfg: HashingConfig, with_origins: bool = False) -> HashedText:
    """Hashed character and word n-gram features of `text` (any string; empty gives no features).

    Character n-grams take slots [0, num_buckets), word n-grams [num_buckets, 2 * num_buckets).
    """
    norm = normalise(text, cfg)
    cps = codepoints(norm)
    char_keys = _char_ngrams(cps, cfg)
    word_keys, word_spans = _word_ngrams(cps, cfg.word_bigrams)
    hashes = _finalise(np.concatenate([char_keys, word_keys]))
    if hashes.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return HashedText(empty, np.zeros(0, dtype=np.float32), {} if with_origins else None)
    slots = (hashes & np.uint64(cfg.num_buckets - 1)).astype(np.int64)
    slots[char_keys.size :] += cfg.num_buckets
    # one sort of (slot, sign bit) keys aggregates equal slots: cheaper than np.unique's argsort
    keys = np.sort(slots * 2 + (hashes >> np.uint64(63)).astype(np.int64))
    sorted_slots = keys >> 1
    starts = np.flatnonzero(np.concatenate(([True], sorted_slots[1:] != sorted_slots[:-1])))
    uniq = sorted_slots[starts]
    counts = np.add.reduceat(1.0 - 2.0 * (keys & 1), starts)
    vals = np.sign(counts) * np.log1p(np.abs(counts))
    # each block (chars, then words: the sorted slots' tail) is scaled to unit length on its own
    split = int(np.searchsorted(uniq, cfg.num_buckets))
    for block in (vals[:split], vals[split:]):
        length = float(np.sqrt(np.dot(block, block))) if block.size else 0.0
        if length > 0:
            block /= length
    origins = None
    if with_origins:
        origins = _origins(norm, slots, cfg, word_spans)
    return HashedText(uniq, vals.astype(np.float32), origins)


def _finalise(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit."""
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX2
    return h ^ (h >> np.uint64(31))


def _char_ngrams(cps: np.ndarray, cfg: HashingConfig) -> np.ndarray:
    """Keys of every char n-gram, n ascending then position.

    FNV-style and rolling: the keys of the (n+1)-grams extend those of the n-grams by one code
    point, so each size costs two array operations; a salt per n keeps sizes apart.
    """
    keys: list[np.ndarray] = []
    h = (np.uint64(0xCBF29CE484222325) ^ cps) * _PRIME  # 1-grams
    for n in range(1, cfg.char_ngram_max + 1):
        if h.size == 0:
            break
        if n >= cfg.char_ngram_min:
            keys.append(h ^ np.uint64(n * _SALT_WORD2))
        h = (h[:-1] ^ cps[n:]) * _PRIME
    return np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)


def _word_char_table() -> np.ndarray:
    cps = np.arange(0x10000, dtype=np.int64)
    table = ((cps >= 48) & (cps <= 57)) | ((cps >= 97) & (cps <= 122)) | ((cps >= 65) & (cps <= 90))
    table |= cps == 95
    other = cps >= 0xC0
    for lo, hi in ((0x2000, 0x2BFF), (0x2E00, 0x9FFF), (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFF65)):
        other &= ~((cps >= lo) & (cps <= hi))
    return table | other


# Letters and digits of space-separated scripts (Latin, Cyrillic, Greek, Arabic, Hangul, ...); CJK
# ideographs, kana, punctuation and symbols are not word characters; nor is anything past U+FFFF.
_WORD_CHARS = _word_char_table()


def is_word_char(cps: np.ndarray) -> np.ndarray:
    """[len] bool: which code points belong to words (see `_WORD_CHARS`)."""
    return _WORD_CHARS[np.minimum(cps, np.uint64(0xFFFF)).astype(np.intp)] & (cps <= 0xFFFF)


class _Powers:
    """POLY**i and POLY**-i mod 2**64 for i < n, grown on demand (the word hash's prefix sums)."""

    def __init__(self) -> None:
        self.forward = np.zeros(0, dtype=np.uint64)
        self.inverse = np.zeros(0, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.forward.size < n:
            size = max(n, 4096)
            one = np.array([1], dtype=np.uint64)
            self.forward = np.concatenate((one, np.full(size - 1, _POLY, dtype=np.uint64).cumprod()))
            self.inverse = np.concatenate((one, np.full(size - 1, _POLY_INV, dtype=np.uint64).cumprod()))
        return self.forward[:n], self.inverse[:n]


_POWERS = _Powers()


def _word_ngrams(cps: np.ndarray, bigrams: bool) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Keys of word unigrams (then bigrams), a polynomial hash of each run of word characters, and
    the (starts, ends) of the words."""
    none = np.zeros(0, dtype=np.int64)
    if cps.size == 0:
        return np.zeros(0, dtype=np.uint64), (none, none)
    word = is_word_char(cps)
    edges = np.diff(np.concatenate(([False], word, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64), (none, none)
    powers, inverse = _POWERS.get(cps.size)
    prefix = np.concatenate(([np.uint64(0)], (cps * powers).cumsum(dtype=np.uint64)))
    words = (prefix[ends] - prefix[starts]) * inverse[starts]
    words = words ^ (ends - starts).astype(np.uint64) * np.uint64(_SALT_WORD1)
    if bigrams and words.size > 1:
        pairs = _finalise(words[:-1]) * _PRIME ^ words[1:] ^ np.uint64(_SALT_WORD2)
        words = np.concatenate([words, pairs])
    return words, (starts, ends)


def _origins(
    norm: str, slots: np.ndarray, cfg: HashingConfig, word_spans: tuple[np.ndarray, np.ndarray]
) -> dict[int, str]:
    """Slot -> the first n-gram text that hashed to it (explanations only, not the hot path)."""
    texts: list[str] = []
    for n in range(cfg.char_ngram_min, cfg.char_ngram_max + 1):
        texts.extend(norm[i : i + n] for i in range(len(norm) - n + 1))
    starts, ends = word_spans[0].tolist(), word_spans[1].tolist()
    texts.extend(norm[a:b] for a, b in zip(starts, ends, strict=True))
    if cfg.word_bigrams and len(starts) > 1:
        texts.extend(norm[a:b] for a, b in zip(starts[:-1], ends[1:], strict=True))
    out: dict[int, str] = {}
    for slot, text in zip(slots.tolist(), texts, strict=True):
        out.setdefault(slot, text)
    return out
