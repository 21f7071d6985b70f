"""StopStringMatcher: stops across piece boundaries, minimal hold-back, first stop wins."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isthmus.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer, TokenizerError


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    matcher = StopStringMatcher(stops)
    emitted: list[str] = []
    stopped = False
    for piece in pieces:
        out, stopped = matcher.push(piece)
        emitted.append(out)
        if stopped:
            break
    if not stopped:
        emitted.append(matcher.flush())
    return "".join(emitted), stopped, emitted


def test_no_stop_passes_everything_through() -> None:
    text, stopped, emitted = run(["STOP"], ["hello ", "world"])
    assert (text, stopped) == ("hello world", False)
    assert emitted == ["hello ", "world", ""]  # nothing looked like the start of STOP


def test_stop_spanning_pieces() -> None:
    text, stopped, emitted = run(["\n\nUser:"], ["Answer.", "\n", "\nUs", "er: next"])
    assert (text, stopped) == ("Answer.", True)
    assert emitted == ["Answer.", "", "", ""]


def test_partial_prefix_held_then_released() -> None:
    matcher = StopStringMatcher(["</s>"])
    assert matcher.push("a <") == ("a ", False)
    assert matcher.push("/") == ("", False)
    assert matcher.push("x") == ("</x", False)  # not a stop after all: released
    assert matcher.push("</") == ("", False)
    assert matcher.flush() == "</"


def test_multiple_stops_earliest_wins() -> None:
    text, stopped, _ = run(["world", "lo w"], ["hel", "lo wor", "ld"])
    assert (text, stopped) == ("hel", True)
    matcher = StopStringMatcher(["ab", "b"])
    assert matcher.push("xab") == ("x", True)
    assert matcher.matched == "ab"
    assert matcher.push("more") == ("", True)


def test_stop_inside_one_piece_and_text_after_is_dropped() -> None:
    assert run(["。"], ["你好。再见"]) == ("你好", True, ["你好"])


def test_hold_back_is_bounded() -> None:
    matcher = StopStringMatcher(["abcd", "xy"])
    out, _ = matcher.push("zzabc")
    assert out == "zz"  # held "abc": len(longest) - 1 chars at most
    out, _ = matcher.push("x")
    assert out == "abc"


def test_bad_stops_are_typed_errors() -> None:
    with pytest.raises(TokenizerError):
        StopStringMatcher([""])
    with pytest.raises(TokenizerError):
        StopStringMatcher("stop")  # type: ignore[arg-type]
    assert StopStringMatcher([]).push("anything") == ("anything", False)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab你\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab你\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
def test_matches_reference(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    # The stop that completes first wins (ties: the one that starts first).
    found = [(i + len(s), i) for s, i in ((s, text.find(s)) for s in stops) if i != -1]
    expected = text[: min(found)[1]] if found else text
    out, stopped, emitted = run(stops, pieces)
    assert (out, stopped) == (expected, bool(found))
    max_hold = max((len(s) for s in stops), default=1) - 1
    num_sent = num_emitted = 0
    for piece, chunk in zip(pieces, emitted, strict=False):
        num_sent, num_emitted = num_sent + len(piece), num_emitted + len(chunk)
        if num_emitted < len(out):  # still streaming (not the stopping push)
            assert num_sent - num_emitted <= max_hold
    assert all(s not in out for s in stops)


def test_with_detokenizer_stop_across_tokens(tiny_tok: Tokenizer) -> None:
    # A Chinese stop string whose bytes are spread over several byte-level tokens.
    ids = tiny_tok.encode("你好，世界。再见", add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tok)
    matcher = StopStringMatcher(["世界。"])
    emitted, stopped = "", False
    for token_id in ids:
        out, stopped = matcher.push(detok.push(token_id))
        emitted += out
        if stopped:
            break
    assert stopped and emitted == "你好，"
