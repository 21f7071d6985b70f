"""How much of a text is English words: the readability measure of the demo's answers.

A word is a whitespace-separated token with its surrounding punctuation and quotes stripped; it
counts as English when it is letters only (an inner apostrophe or hyphen allowed) and, lowercased,
in the word list; of single letters only "a" and "I" count. Tokens with no letter at all
(numbers, symbols) are not words; identifiers such as `os.path` or `__init__` are words that do
not count. Two word lists:

- a system dictionary such as `/usr/share/dict/words` (Debian's `wamerican`), independent of the
  models: used to measure the demo's output, never needed at run time;
- `corpus_vocabulary()`: the words of the models' own training text, so tests need no system file.

    bash scripts/demo > /tmp/demo.out
    .venv/bin/python -m isthmus.models.english /tmp/demo.out --words /usr/share/dict/words
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_STRIP = "\"'`“”‘’()[]{}<>.,;:!?*"
_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
_ANSWER = re.compile(r"^> (?P<prompt>[^\n]*)\n(?P<answer>.*?)\n  \[answered by ", re.MULTILINE | re.DOTALL)
_HANDOVER_MARK = re.compile(r" \[-> \w+: \w+\] ")
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Count:
    num_words: int
    num_english: int
    num_replacement: int  # U+FFFD characters

    @property
    def fraction(self) -> float:
        return self.num_english / self.num_words if self.num_words else 0.0


def candidate_words(text: str) -> list[str]:
    """The text's words: tokens with a letter in them, surrounding punctuation stripped."""
    out = []
    for token in text.split():
        token = token.strip(_STRIP)
        if any(c.isalpha() for c in token):
            out.append(token)
    return out


def is_english(word: str, vocabulary: set[str]) -> bool:
    """Letters only, in the vocabulary; of single letters only "a" and "I" (word lists hold every
    letter, and `x` or `n` in an answer are variable names, not English)."""
    if not _WORD.fullmatch(word) or (len(word) == 1 and word not in ("a", "A", "I")):
        return False
    return word.lower() in vocabulary


def count_english(texts: Iterable[str], vocabulary: set[str]) -> Count:
    """Words, English words (in `vocabulary`, lowercase) and replacement characters over `texts`."""
    num_words = num_english = num_bad = 0
    for text in texts:
        num_bad += text.count(REPLACEMENT)
        for word in candidate_words(text):
            num_words += 1
            num_english += is_english(word, vocabulary)
    return Count(num_words, num_english, num_bad)


def load_word_list(path: Path) -> set[str]:
    """One word per line, lowercased (possessive forms such as `Python's` dropped)."""
    words = path.read_text(encoding="utf-8", errors="replace").split()
    return {w.lower() for w in words if not w.endswith("'s")}


def corpus_vocabulary() -> set[str]:
    """Every word (lowercase) of the default models' training text and questions."""
    from .corpus import all_samples

    vocab: set[str] = set()
    for s in all_samples():
        for text in (s.question, s.answer):
            vocab.update(w.lower() for w in candidate_words(text) if _WORD.fullmatch(w))
    return vocab


def demo_answers(output: str) -> list[tuple[str, str]]:
    """(prompt, answer text) for each answer printed by `isthmus demo`."""
    return [
        (m["prompt"], _HANDOVER_MARK.sub(" ", m["answer"]).strip()) for m in _ANSWER.finditer(output)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="share of English words in the answers of `isthmus demo`")
    p.add_argument("output", type=Path, help="the demo's printed output")
    p.add_argument("--words", type=Path, help="word list (default: the training text's vocabulary)")
    a = p.parse_args(argv)
    vocab = load_word_list(a.words) if a.words else corpus_vocabulary()
    answers = demo_answers(a.output.read_text(encoding="utf-8", errors="replace"))
    for prompt, answer in answers:
        c = count_english([answer], vocab)
        print(f"{c.num_english:3d}/{c.num_words:3d} English  {prompt[:50]!r}")
    total = count_english([a for _, a in answers], vocab)
    print(
        f"{len(answers)} answers: {total.num_english} of {total.num_words} words are English "
        f"({100 * total.fraction:.1f}%), {total.num_replacement} U+FFFD"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
