"""The demo's prompts, its output format and the English measure read back from that output.

The whole demo runs as a subprocess in tests/cli/test_network.py; the routing margins it relies on
are in test_demo_margins.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from isthmus.cli import defaults
from isthmus.cli.chat import Answer
from isthmus.cli.demo import HANDOVER_PROMPT, MAX_TOKENS, PROMPTS, DemoPrompt, table
from isthmus.models import EDGE_DEFAULT
from isthmus.models.english import count_english, demo_answers

OUTPUT = """isthmus demo: ...

> What does the assert statement do?
 The assert statement is a convenient way to insert debugging assertions.
  [answered by edge: score_below_threshold]

> What is a lambda expression?  (tier=center)
 Lambda expressions are used to create anonymous functions.
  [answered by center: wish_center]

> What does the os.frobnicate function do?
 Return the [-> center: confidence_collapse] value of the path.
  [answered by center: confidence_collapse, handed over mid-answer]
"""


def test_prompts_have_a_wish_and_the_hand_over_prompt() -> None:
    assert HANDOVER_PROMPT in [p.text for p in PROMPTS]
    assert [p.tier for p in PROMPTS].count("center") == 1
    assert all(p.tier in ("auto", "center") for p in PROMPTS)
    assert 16 <= MAX_TOKENS <= 96  # a sentence or three


def test_answers_read_back_from_the_output_without_the_hand_over_mark() -> None:
    answers = demo_answers(OUTPUT)
    assert [p for p, _ in answers] == [
        "What does the assert statement do?",
        "What is a lambda expression?  (tier=center)",
        "What does the os.frobnicate function do?",
    ]
    assert answers[2][1] == "Return the value of the path."


def test_english_count_is_strict_about_identifiers_and_counts_replacement_characters() -> None:
    vocab = {"the", "value", "of", "path", "return"}
    c = count_english(["Return the value of os.path \ufffd 42 ."], vocab)
    assert (c.num_words, c.num_english, c.num_replacement) == (5, 4, 1)  # os.path: a word, not English


def test_table_marks_the_hand_over() -> None:
    def answer(tier: str, reason: str, handed: bool) -> Answer:
        completion = SimpleNamespace(
            route=SimpleNamespace(tier=tier, reason=reason),
            timings=SimpleNamespace(first_token_ms=12.0),
            usage=SimpleNamespace(completion_tokens=10),
        )
        return Answer("text", completion, handed, 0.01, 0.5)

    rows = [
        (DemoPrompt("What is the json module?"), answer("edge", "score_below_threshold", False)),
        (DemoPrompt(HANDOVER_PROMPT), answer("center", "confidence_collapse", True)),
    ]
    lines = table(rows).splitlines()
    assert lines[0].split()[:3] == ["prompt", "tier", "route"]
    assert "edge->center" in lines[3] and lines[3].rstrip().endswith("yes")
    assert "edge " in lines[2] and lines[2].rstrip().endswith("no")


def test_the_shipped_defaults_are_used_and_a_corrupt_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    notes: list[str] = []
    assert defaults.ensure_default_model(tmp_path, "edge", notes.append) == EDGE_DEFAULT
    assert notes and "trained" in notes[0]
    copy = tmp_path / "edge-default"
    copy.mkdir()
    for p in EDGE_DEFAULT.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    monkeypatch.setattr(defaults, "default_model_path", lambda which: copy)
    with pytest.raises(defaults.DefaultModelError, match=r"config\.json"):
        defaults.ensure_default_model(tmp_path, "edge", notes.append)
