"""The default models' training text: CPython's own documentation, as chat turns.

Two sources ship with every CPython (PSF License 2.0), so nothing is downloaded:

- `pydoc_data.topics`: the language reference and library-manual topics that `help()` shows;
- the docstrings of a fixed list of standard-library modules and their public classes/functions.

Each prose paragraph becomes one chat sample: a question about its section or object (`What is
the "assert" statement?`, `What does json.dumps do?`) and the paragraph as the answer. Code
listings, grammar rules and tables are skipped: the models are to answer in English prose.
Everything is deterministic for a given Python build (the docstrings follow the interpreter).
"""

from __future__ import annotations

import importlib
import inspect
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MIN_CHARS = 60  # a paragraph shorter than this is a caption or a fragment
MAX_CHARS = 700  # longer ones are cut at a sentence end (answers of a few sentences)
MIN_WORD_FRACTION = 0.75  # share of plain alphabetic words a paragraph needs to count as prose

MODULES = (
    "builtins abc argparse array ast asyncio base64 bisect binascii bz2 calendar cmath codecs collections "
    "colorsys concurrent.futures configparser contextlib copy csv dataclasses datetime decimal "
    "difflib dis doctest email enum filecmp fileinput fnmatch fractions ftplib functools gc getopt "
    "gettext glob graphlib gzip hashlib heapq hmac html html.parser http.client http.server imaplib "
    "importlib inspect io ipaddress itertools json keyword linecache locale logging lzma mailbox "
    "math mimetypes mmap multiprocessing netrc numbers operator optparse os pathlib pickle pkgutil "
    "platform plistlib poplib pprint queue quopri random re reprlib runpy sched secrets select "
    "selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl stat statistics "
    "string struct subprocess symtable sysconfig tarfile tempfile textwrap threading time timeit "
    "tokenize tomllib trace traceback types typing unicodedata unittest urllib.parse "
    "urllib.request uuid warnings wave weakref xml.dom.minidom xml.etree.ElementTree zipapp zipfile "
    "zlib zoneinfo"
).split()

TOPIC_QUESTIONS = ("What is {}?", "Explain {}.", "Tell me about {}.", "How does {} work?", "Describe {}.")
OBJECT_QUESTIONS = ("What does {} do?", "Explain {}.", "What is {} for?", "Describe {}.")
MODULE_QUESTIONS = ("What is the {} module?", "What does the {} module do?", "Tell me about the {} module.")

_UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}$")
_WORD = re.compile(r"[A-Za-z]+[.,;:!?)'\"]*$")


@dataclass(frozen=True)
class Sample:
    """One chat turn: `question` from the user, `answer` from the assistant; `source` names its document."""

    source: str
    question: str
    answer: str


def _pick(templates: tuple[str, ...], key: str) -> str:
    return templates[zlib.crc32(key.encode()) % len(templates)]


def _is_prose(text: str) -> bool:
    words = text.split()
    if len(text) < MIN_CHARS or not words:
        return False
    if any(mark in text for mark in (">>>", "::=", "+--", "|   ")):
        return False
    plain = sum(1 for w in words if _WORD.match(w.lstrip("(\"'")))
    return plain / len(words) >= MIN_WORD_FRACTION


def _clip(text: str) -> str:
    """Cut past MAX_CHARS at the last sentence end before it."""
    if len(text) <= MAX_CHARS:
        return text
    cut = text.rfind(". ", 0, MAX_CHARS)
    return text[: cut + 1] if cut > MIN_CHARS else text[:MAX_CHARS].rsplit(" ", 1)[0] + "."


def paragraphs(doc: str) -> Iterator[tuple[str | None, str]]:
    """(heading or None, prose paragraph joined into one line) for each unindented paragraph."""
    heading: str | None = None
    lines = doc.splitlines()
    block: list[str] = []
    for i, line in enumerate([*lines, ""]):
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if _UNDERLINE.match(line.strip()):
            continue
        if line.strip() and _UNDERLINE.match(nxt):
            heading = line.strip()
            continue
        if line.strip() and (not line.startswith((" ", "\t")) or block):
            block.append(line.strip())
            continue
        if line.strip():  # an indented block's first line: a list item or a note if it reads as prose
            block.append(line.strip().removeprefix("* ").removeprefix("- "))
            continue
        if block:
            text = " ".join(block)
            block = []
            if _is_prose(text):
                yield heading, _clip(text)


def _topic_name(title: str) -> str:
    # 'The "assert" statement' -> 'the "assert" statement'; keep proper nouns' case otherwise.
    return title[0].lower() + title[1:] if title[:4] in ("The ", "An ", "A ") or title[:2] == "A " else title


def topic_samples() -> Iterator[Sample]:
    """Samples from `pydoc_data.topics`, one per prose paragraph, asked about its section heading."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        for n, (heading, text) in enumerate(paragraphs(topics[key])):
            title = _topic_name(heading or key.replace("-", " "))
            question = _pick(TOPIC_QUESTIONS, f"{key}/{n}").format(title)
            yield Sample(f"topic:{key}", question, text)


def _public_objects(module: object) -> Iterator[tuple[str, object]]:
    name = getattr(module, "__name__", "")
    for attr in sorted(getattr(module, "__all__", None) or dir(module)):
        if attr.startswith("_"):
            continue
        obj = getattr(module, attr, None)
        if (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)) and getattr(
            obj, "__module__", None
        ) in (name, name.lstrip("_")):
            yield f"{name}.{attr}", obj


def docstring_samples() -> Iterator[Sample]:
    """Samples from the docstrings of `MODULES` and their public classes and functions."""
    for modname in MODULES:
        try:
            module = importlib.import_module(modname)
        except ImportError:  # an interpreter built without it (e.g. no _sqlite3): skip
            continue
        for n, (_, text) in enumerate(paragraphs(inspect.getdoc(module) or "")):
            yield Sample(f"module:{modname}", _pick(MODULE_QUESTIONS, f"{modname}/{n}").format(modname), text)
        for qualname, obj in _public_objects(module):
            yield from _object_samples(qualname, obj, qualname)
            for attr, member in sorted(vars(obj).items()) if inspect.isclass(obj) else ():
                if not attr.startswith("_") and callable(member):
                    yield from _object_samples(f"{qualname}.{attr}", member, qualname)


def _object_samples(qualname: str, obj: object, source: str) -> Iterator[Sample]:
    # a class's methods share its source, so the held-out split keeps a class together
    for n, (_, text) in enumerate(paragraphs(inspect.getdoc(obj) or "")):
        question = _pick(OBJECT_QUESTIONS, f"{qualname}/{n}").format(qualname)
        yield Sample(f"object:{source}", question, text)


def all_samples() -> list[Sample]:
    """Every sample, topics first, duplicates (same question and answer) dropped."""
    seen: set[tuple[str, str]] = set()
    out: list[Sample] = []
    for s in [*topic_samples(), *docstring_samples()]:
        if (s.question, s.answer) not in seen:
            seen.add((s.question, s.answer))
            out.append(s)
    return out


def is_held_out(sample: Sample, percent: int = 5) -> bool:
    """Deterministic split by source document, so held-out text was never seen in training."""
    return zlib.crc32(sample.source.encode()) % 100 < percent
