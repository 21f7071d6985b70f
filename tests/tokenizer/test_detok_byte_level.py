"""The byte-level fast path of IncrementalDetokenizer: no decode call per token, same text as
`Tokenizer.decode` of all the ids, never half a character in a delta."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from isthmus.tokenizer import IncrementalDetokenizer, Tokenizer
from isthmus.tokenizer.byte_level import ByteTable, _reproduces_decode, byte_table, token_bytes

from .test_detok import FFFD, byte_ids, check_invariants

# Several tokens per character (CJK, rare hanzi, emoji with ZWJ, skin tones and flags).
CJK_EMOJI = (
    "今天天气很好，我们去公园散步吧！🌸🌞 数学：∑∫√π ≈ 3.14159。家庭👨‍👩‍👧‍👦、国旗🇨🇳🇯🇵、"
    "肤色👍🏽。繁體中文與日本語のテキスト，罕见字龘靐齉。😀😃😄😁😆😅😂🤣🦜🧬"
)


class CountingTokenizer(Tokenizer):
    """Counts decode calls (the cost the fast path removes)."""

    calls = 0

    def decode(self, ids, skip_special_tokens=True):  # type: ignore[no-untyped-def]
        CountingTokenizer.calls += 1
        return super().decode(ids, skip_special_tokens)


def test_fast_path_only_for_byte_level(tiny_tok: Tokenizer, sp_tok: Tokenizer) -> None:
    assert IncrementalDetokenizer(tiny_tok).is_byte_level
    assert not IncrementalDetokenizer(tiny_tok, byte_level=False).is_byte_level
    assert byte_table(sp_tok) is None  # Metaspace + ByteFallback: decoded by windows
    assert not IncrementalDetokenizer(sp_tok).is_byte_level


def test_no_decode_call_per_token(tiny_tok: Tokenizer) -> None:
    ids = tiny_tok.encode(CJK_EMOJI, add_special_tokens=False)
    byte_table(tiny_tok)  # built once per tokenizer (its probe decodes)
    tiny_tok.__class__ = CountingTokenizer
    try:
        CountingTokenizer.calls = 0
        detok = IncrementalDetokenizer(tiny_tok)
        text = "".join(detok.push(i) for i in ids) + detok.flush()
        assert CountingTokenizer.calls == 0 and text == CJK_EMOJI
        window = IncrementalDetokenizer(tiny_tok, byte_level=False)
        assert "".join(window.push(i) for i in ids) + window.flush() == CJK_EMOJI
        assert CountingTokenizer.calls > len(ids)  # the window path: about two per token
    finally:
        tiny_tok.__class__ = Tokenizer


@settings(max_examples=200, deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_random_ids_match_decode(tiny_tok: Tokenizer, data: st.DataObject, skip: bool) -> None:
    """Random ids: single bytes (invalid UTF-8 often), any token, added and special tokens."""
    table = byte_table(tiny_tok)
    assert table is not None
    any_id = st.integers(0, tiny_tok.vocab_size - 1)
    added = st.sampled_from(sorted(table.added))
    ids = data.draw(st.lists(st.one_of(any_id, st.sampled_from(byte_ids(tiny_tok)), added), max_size=80))
    check_invariants(tiny_tok, ids, skip)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_cjk_emoji_pieces_match_decode(tiny_tok: Tokenizer, data: st.DataObject, skip: bool) -> None:
    """Slices of a CJK/emoji text's ids (starting and ending mid-character), shuffled or with
    added tokens dropped in: the pushes add up to decode(all ids), byte for byte."""
    text_ids = tiny_tok.encode(CJK_EMOJI, add_special_tokens=False)
    lo = data.draw(st.integers(0, len(text_ids)))
    hi = data.draw(st.integers(lo, len(text_ids)))
    ids = text_ids[lo:hi]
    if data.draw(st.booleans()):
        ids = data.draw(st.permutations(ids))
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(ids)))
        ids = [*ids[:at], data.draw(st.integers(0, 5)), *ids[at:]]  # bos, eos, the R1 markers
    check_invariants(tiny_tok, list(ids), skip)
    detok = IncrementalDetokenizer(tiny_tok, skip_special_tokens=skip)
    assert detok.is_byte_level
    window = IncrementalDetokenizer(tiny_tok, skip_special_tokens=skip, byte_level=False)
    fast = "".join(detok.push(i) for i in ids) + detok.flush()
    assert fast == "".join(window.push(i) for i in ids) + window.flush()


def test_valid_text_deltas_are_whole_characters(tiny_tok: Tokenizer) -> None:
    ids = tiny_tok.encode(CJK_EMOJI, add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tok)
    deltas = [detok.push(i) for i in ids]
    assert detok.flush() == ""
    assert "".join(deltas) == CJK_EMOJI and all(FFFD not in d for d in deltas)
    assert "" in deltas  # held back while a character was incomplete


def test_prompt_context(tiny_tok: Tokenizer) -> None:
    prompt = tiny_tok.encode("User: 你好\n\nAssistant:", add_special_tokens=True)
    answer = tiny_tok.encode(" 中文 😀 ok", add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tok, prefix_ids=prompt)
    assert detok.is_byte_level
    assert "".join(detok.push(i) for i in answer) + detok.flush() == " 中文 😀 ok"
    # A prompt ending inside a character keeps the window path's handling of its context.
    lead = tiny_tok.token_to_id("ä")  # byte 0xE4: starts a 3-byte character
    assert lead is not None
    assert not IncrementalDetokenizer(tiny_tok, prefix_ids=[*prompt, lead]).is_byte_level


def test_token_bytes() -> None:
    assert token_bytes("Ġhello") == b" hello"
    assert token_bytes("ä¸Ń") == "中".encode()
    assert token_bytes("<｜User｜>") == "<｜User｜>".encode()  # outside the alphabet: its UTF-8
    assert token_bytes("a\u00a0b") == "a\u00a0b".encode()  # latin-1, but not an alphabet character


def test_probe_refuses_a_wrong_table(tiny_tok: Tokenizer) -> None:
    table = byte_table(tiny_tok)
    assert table is not None and _reproduces_decode(table, tiny_tok)
    ids = tiny_tok.encode("中", add_special_tokens=False)
    pieces = list(table.pieces)
    pieces[ids[0]] = b"?"
    assert not _reproduces_decode(ByteTable(pieces, table.added), tiny_tok)
