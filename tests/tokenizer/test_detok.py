"""IncrementalDetokenizer: deltas add up to decode(all), never half a character, bounded window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from isthmus.tokenizer import IncrementalDetokenizer, Tokenizer

FFFD = "\ufffd"


def stream(tok: Tokenizer, ids: list[int], skip: bool = True, prefix: list[int] | None = None) -> list[str]:
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip, prefix_ids=prefix)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    assert detok.token_ids == ids
    assert detok.text == "".join(deltas)
    return deltas


def check_invariants(tok: Tokenizer, ids: list[int], skip: bool) -> None:
    deltas = stream(tok, ids, skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) == full
    pos = 0
    for delta in deltas:
        # Any U+FFFD we emit is one the full decode also has at that spot (a truly invalid byte),
        # never the stand-in for a character whose remaining bytes had not arrived yet.
        for j, ch in enumerate(delta):
            if ch == FFFD:
                assert full[pos + j] == FFFD
        pos += len(delta)


def byte_ids(tok: Tokenizer) -> list[int]:
    # In the tiny byte-level vocabulary the 256 single-byte tokens come right after the 6 added ones.
    return [i for i in range(tok.vocab_size) if len(tok.id_to_token(i) or "") == 1]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_random_sequences_tiny(tiny_tok: Tokenizer, data: st.DataObject, skip: bool) -> None:
    singles = byte_ids(tiny_tok)
    any_id = st.integers(0, tiny_tok.vocab_size - 1)
    ids = data.draw(st.lists(st.one_of(any_id, st.sampled_from(singles)), max_size=60))
    check_invariants(tiny_tok, ids, skip)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_random_sequences_sentencepiece(sp_tok: Tokenizer, data: st.DataObject, skip: bool) -> None:
    byte_fallback = [sp_tok.token_to_id(f"<0x{b:02X}>") for b in range(256)]
    any_id = st.integers(0, sp_tok.vocab_size - 1)
    ids = data.draw(st.lists(st.one_of(any_id, st.sampled_from(byte_fallback)), max_size=60))
    check_invariants(sp_tok, ids, skip)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_encoded_text_streams_back_exactly(tiny_tok: Tokenizer, sp_tok: Tokenizer, text: str) -> None:
    for tok in (tiny_tok, sp_tok):
        ids = tok.encode(text, add_special_tokens=False)
        deltas = stream(tok, ids)
        assert "".join(deltas) == tok.decode(ids)
        assert FFFD not in "".join(deltas) or FFFD in text


def test_chinese_and_emoji_never_split(tiny_tok: Tokenizer) -> None:
    text = "罕见字龘靐齉，今天🦜🧬很好👩‍👩‍👧！"
    ids = tiny_tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)  # several tokens per character: the hard case
    deltas = stream(tiny_tok, ids)
    assert "".join(deltas) == text
    assert all(FFFD not in d for d in deltas)
    assert deltas.count("") > 0  # some pushes had to hold back


def test_byte_fallback_tokens(sp_tok: Tokenizer) -> None:
    text = "龘 and 🦜 ok"
    ids = sp_tok.encode(text, add_special_tokens=False)
    pieces = [sp_tok.id_to_token(i) for i in ids]
    assert any(p is not None and p.startswith("<0x") for p in pieces)  # went through byte fallback
    deltas = stream(sp_tok, ids)
    assert "".join(deltas) == text == sp_tok.decode(ids)
    assert all(FFFD not in d for d in deltas)


def test_sentencepiece_spaces_with_prompt_context(sp_tok: Tokenizer) -> None:
    prompt = sp_tok.encode("The library opened on", add_special_tokens=True)
    answer = sp_tok.encode("The library opened on Saturdays and Tuesdays", add_special_tokens=True)
    assert answer[: len(prompt)] == prompt
    generated = answer[len(prompt) :]
    # Decoded alone, Metaspace drops the leading space; with the prompt as context it stays.
    assert not sp_tok.decode(generated).startswith(" ")
    text = "".join(stream(sp_tok, generated, prefix=prompt))
    assert text == " Saturdays and Tuesdays"
    assert "".join(stream(sp_tok, generated)) == sp_tok.decode(generated)


def test_special_tokens_skipped_or_kept(tiny_tok: Tokenizer) -> None:
    body = tiny_tok.encode("你好 world", add_special_tokens=False)
    ids = [tiny_tok.bos_token_id or 0, *body, tiny_tok.eos_token_id]
    assert "".join(stream(tiny_tok, ids, skip=True)) == "你好 world"
    kept = "".join(stream(tiny_tok, ids, skip=False))
    assert kept == "<｜begin▁of▁sentence｜>你好 world<｜end▁of▁sentence｜>"


def test_window_stays_bounded(tiny_tok: Tokenizer) -> None:
    lead_byte = tiny_tok.token_to_id("ä")  # byte 0xE4 alone: starts a 3-byte character
    assert lead_byte is not None
    text_ids = tiny_tok.encode("Chinese 中文 text and more words. " * 40, add_special_tokens=False)
    for ids in (text_ids, [lead_byte] * 300):
        detok = IncrementalDetokenizer(tiny_tok)
        max_window = 0
        deltas = []
        for i in ids:
            deltas.append(detok.push(i))
            max_window = max(max_window, detok.num_window_tokens)
        deltas.append(detok.flush())
        assert "".join(deltas) == tiny_tok.decode(ids)
        assert max_window <= 16  # O(window) per token, not O(sequence)


def test_flush_emits_incomplete_tail(tiny_tok: Tokenizer) -> None:
    ids = tiny_tok.encode("中", add_special_tokens=False)
    if len(ids) == 1:  # merged into one token: cut it into its bytes instead
        ids = [tiny_tok.token_to_id(c) or 0 for c in tiny_tok.id_to_token(ids[0]) or ""]
    detok = IncrementalDetokenizer(tiny_tok)
    assert detok.push(ids[0]) == ""
    assert detok.flush() == FFFD == tiny_tok.decode(ids[:1])


def test_bad_token_id_is_a_typed_error(tiny_tok: Tokenizer) -> None:
    import pytest
    from isthmus.tokenizer import TokenizerError

    detok = IncrementalDetokenizer(tiny_tok)
    with pytest.raises(TokenizerError):
        detok.push(tiny_tok.vocab_size)
    with pytest.raises(TokenizerError):
        detok.push(-1)
    assert detok.push(tiny_tok.encode("a", add_special_tokens=False)[0]) == "a"
