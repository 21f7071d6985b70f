"""The labelled routing corpus: JSONL reading with clear errors, and the fixed train/test split.

One JSON object per line: `prompt` (str), `label` ("edge" or "center"), optional `category`,
`lang`, `max_tokens` (int) and `num_turns` (int). See `edge/routing_data/RUBRIC.md`.

The split is a pure function of the prompt text: SHA-256 of the UTF-8 prompt, and a prompt is in
the test split when that number modulo 5 is 0 (about 20%). It never depends on file order or on the
other prompts, so adding prompts leaves every existing prompt on its side, and anyone can recompute
it. Fitting and every choice made by cross-validation use the train split only; the test split
serves to report figures and to pick the default threshold (`fit.choose_threshold`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

LABELS = ("edge", "center")
CORPUS_DIR = Path(__file__).resolve().parent.parent / "routing_data"
CORPUS_FILES = ("en.jsonl", "zh.jsonl", "other.jsonl")
TEST_MODULUS = 5  # 1 in 5 prompts is in the test split

Split = Literal["train", "test"]


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled prompt."""

    prompt: str
    label: str  # "edge" or "center"
    category: str = ""
    lang: str = ""
    max_tokens: int = 512
    num_turns: int = 1

    @property
    def is_center(self) -> bool:
        return self.label == "center"

    @property
    def split(self) -> Split:
        return split_of(self.prompt)


def split_of(prompt: str) -> Split:
    """"test" for about one prompt in five, fixed by the prompt's text alone."""
    digest = hashlib.sha256(prompt.encode("utf-8", errors="surrogatepass")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_MODULUS == 0 else "train"


def read_jsonl(path: str | Path) -> list[Example]:
    """Every example in a JSONL file; raises `CorpusError` naming the file, line and problem."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 ({exc})") from None
    out: list[Example] = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            out.append(_example(line, f"{path}:{number}"))
    return out


def _example(line: str, where: str) -> Example:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object")
    prompt, label = obj.get("prompt"), obj.get("label")
    if not isinstance(prompt, str) or not prompt.strip():
        raise CorpusError(f"{where}: prompt: expected a non-empty string")
    if label not in LABELS:
        raise CorpusError(f"{where}: label: expected \"edge\" or \"center\", got {label!r}")
    ints = {}
    for key, default, low in (("max_tokens", 512, 1), ("num_turns", 1, 1)):
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CorpusError(f"{where}: {key}: expected an integer >= {low}, got {value!r}")
        ints[key] = value
    texts = {}
    for key in ("category", "lang"):
        value = obj.get(key, "")
        if not isinstance(value, str):
            raise CorpusError(f"{where}: {key}: expected a string, got {value!r}")
        texts[key] = value
    return Example(
        prompt, str(label), texts["category"], texts["lang"], ints["max_tokens"], ints["num_turns"]
    )


def read_corpus(folder: str | Path | None = None) -> list[Example]:
    """The project's corpus (every `CORPUS_FILES` present in `folder`), duplicates dropped."""
    base = Path(folder) if folder is not None else CORPUS_DIR
    examples: list[Example] = []
    for name in CORPUS_FILES:
        if (base / name).is_file():
            examples.extend(read_jsonl(base / name))
    return dedupe(examples)


def dedupe(examples: Iterable[Example]) -> list[Example]:
    """First occurrence of each prompt text only (a prompt in both splits would leak)."""
    seen: set[str] = set()
    out: list[Example] = []
    for ex in examples:
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


def split(examples: Iterable[Example]) -> tuple[list[Example], list[Example]]:
    """(train, test) by `split_of`."""
    train: list[Example] = []
    test: list[Example] = []
    for ex in examples:
        (test if ex.split == "test" else train).append(ex)
    return train, test
