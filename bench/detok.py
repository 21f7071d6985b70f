"""Streaming detokenization cost per token: the previous `IncrementalDetokenizer` (loaded from git,
two `tokenizers` decode calls per token) against the current one, in the same run.

Printed per tokenizer: µs per push() (the fastest of --repeats passes over the same ~2,000-token
English/Chinese/emoji text, flush included) and decode calls per token, for
  old      tokenizer/detok.py at --old-rev (default: before the byte-level fast path)
  window   the current class with byte_level=False (the path non-byte-level tokenizers take)
  new      the current class (the byte-level fast path where the tokenizer allows it)
and, once, the time to build the byte table for the tiny vocabulary and for a synthetic byte-level
vocabulary of --vocab tokens (DeepSeek's is 102,400), paid at the first detokenizer of a tokenizer.

    .venv/bin/python bench/detok.py [--repeats 5] [--old-rev 67e5f1f]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import types
from pathlib import Path

from isthmus.models.tiny_tokenizer import write_tiny_tokenizer
from isthmus.tokenizer import IncrementalDetokenizer, Tokenizer, byte_level

REPO = Path(__file__).resolve().parents[1]
TEXT = (
    "The edge answers what it can and escalates the rest. 今天天气很好，我们去公园散步吧！🌸🌞 "
    "数学：∑∫√π ≈ 3.14159。家庭👨‍👩‍👧‍👦 def f(x): return x**2  # code too\n"
) * 24


class Counting(Tokenizer):
    calls = 0

    def decode(self, ids, skip_special_tokens=True):  # type: ignore[no-untyped-def]
        Counting.calls += 1
        return super().decode(ids, skip_special_tokens)


def old_class(rev: str) -> type:
    """`IncrementalDetokenizer` as tokenizer/detok.py was at `rev`."""
    src = subprocess.run(["git", "show", f"{rev}:tokenizer/detok.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    module = types.ModuleType("isthmus.tokenizer._detok_old")
    module.__package__ = "isthmus.tokenizer"  # its `from .hf import Tokenizer`
    exec(compile(src, f"{rev}:tokenizer/detok.py", "exec"), module.__dict__)
    return module.IncrementalDetokenizer  # type: ignore[no-any-return]


def per_token(make, tok: Tokenizer, ids: list[int], repeats: int) -> tuple[float, float, str]:  # type: ignore[no-untyped-def]
    """(µs per push, decode calls per token, the text) of streaming `ids` through make(tok)."""
    best = float("inf")
    tok.__class__ = Counting
    for _ in range(repeats):
        Counting.calls = 0
        t0 = time.perf_counter()
        detok = make(tok)
        parts = [detok.push(i) for i in ids]
        parts.append(detok.flush())
        best = min(best, time.perf_counter() - t0)
    tok.__class__ = Tokenizer
    return best / len(ids) * 1e6, Counting.calls / len(ids), "".join(parts)


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer with `vocab_size` tokens (every byte, then made-up pieces)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = list(byte_level._bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)}
    i = 0
    while len(vocab) < vocab_size:
        a, b, c = alphabet[i % 256], alphabet[(i // 256) % 256], alphabet[(i // 65536) % 256]
        vocab.setdefault("Ġ" + a + b + c, len(vocab))
        i += 1
    raw = RawTokenizer(models.BPE(vocab, []))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(["<eos>"])
    return Tokenizer(raw.to_str().encode(), {"eos_token": "<eos>"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--old-rev", default="67e5f1f")
    ap.add_argument("--vocab", type=int, default=102400)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    write_tiny_tokenizer(folder)
    tok = Tokenizer.from_dir(folder)
    for t, label in ((tok, "tiny (1,024)"), (synthetic_tokenizer(args.vocab), f"synthetic ({args.vocab:,})")):
        t0 = time.perf_counter()
        assert byte_level.byte_table(t) is not None
        ms = (time.perf_counter() - t0) * 1e3
        print(f"byte table, {label} vocabulary: {ms:.1f} ms (once per tokenizer)")
    ids = tok.encode(TEXT, add_special_tokens=False)
    old = old_class(args.old_rev)
    print(f"tiny byte-level tokenizer, {len(ids)} tokens; µs per push (fastest of {args.repeats}), "
          "decode calls per token:")
    texts = []
    cases = (("old", old), ("window", lambda t: IncrementalDetokenizer(t, byte_level=False)),
             ("new", IncrementalDetokenizer))
    for name, make in cases:
        us, calls, text = per_token(make, tok, ids, args.repeats)
        texts.append(text)
        print(f"  {name:6s} {us:6.2f} µs  {calls:.2f} calls")
    assert texts[0] == texts[1] == texts[2] == tok.decode(ids), "outputs differ"
    print("  (all three texts equal decode(ids))")


if __name__ == "__main__":
    main()
