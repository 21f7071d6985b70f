"""Encode/decode/chat parity with transformers' AutoTokenizer on the same files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from isthmus.tokenizer import Tokenizer

from tests.tokenizer.conftest import load_hf

TEXTS = [
    "Hello world, this is a test.",
    "  leading spaces and trailing  ",
    "今天天气真好，我们去公园散步吧。",
    "mixed 中文 and English 12345 text",
    "emoji 🚀🎉 👩‍👩‍👧 and rare 龘靐",
    "code: def f(x):\n    return x ** 2\n",
    "special <｜begin▁of▁sentence｜> inside <｜end▁of▁sentence｜> text",
    "<｜User｜>hi<｜Assistant｜><think>\nhmm</think>ok",
    "",
]

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "Write a haiku 🌊"},
    ],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>\nplanning\n</think>\n\nDone."},
        {"role": "user", "content": "Again"},
    ],
]


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_encode_decode_matches_transformers(tiny_dir: Path, tiny_tok: Tokenizer, text: str) -> None:
    hf = load_hf(tiny_dir)
    for add in (True, False):
        ids = tiny_tok.encode(text, add_special_tokens=add)
        assert ids == hf.encode(text, add_special_tokens=add)
    for skip in (True, False):
        assert tiny_tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert tiny_tok.encode(text)[0] == tiny_tok.bos_token_id


def test_special_ids_match_transformers(tiny_dir: Path, tiny_tok: Tokenizer) -> None:
    hf = load_hf(tiny_dir)
    assert (tiny_tok.bos_token_id, tiny_tok.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    assert tiny_tok.pad_token_id == hf.pad_token_id
    assert tiny_tok.vocab_size == len(hf)
    assert set(tiny_tok.all_special_ids) == set(hf.all_special_ids)


@pytest.mark.parametrize("fixture", ["tiny_dir", "r1_dir"])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    request: pytest.FixtureRequest,
    fixture: str,
    conversation: list[dict[str, str]],
    add_generation_prompt: bool,
) -> None:
    path: Path = request.getfixturevalue(fixture)
    ours, hf = Tokenizer.from_dir(path), load_hf(path)
    text = ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    gen = add_generation_prompt
    expected = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)
    assert text == expected
    ids = ours.encode_chat(conversation, add_generation_prompt=add_generation_prompt)
    hf_ids = hf.apply_chat_template(conversation, tokenize=True, add_generation_prompt=gen)
    hf_ids = hf_ids["input_ids"] if hasattr(hf_ids, "keys") else hf_ids
    assert ids == list(hf_ids)
    assert ids.count(ours.bos_token_id) == 1 and ids[0] == ours.bos_token_id


def test_r1_template_shape(r1_dir: Path) -> None:
    tok = Tokenizer.from_dir(r1_dir)
    text = tok.apply_chat_template(CONVERSATIONS[3])
    assert text.startswith("<｜begin▁of▁sentence｜>Be kind.<｜User｜>Think first.<｜Assistant｜>")
    assert "planning" not in text  # past reasoning dropped
    assert text.endswith("<｜User｜>Again<｜Assistant｜><think>\n")


def _variant(src: Path, dst: Path, edit: Any, tokenizer_edit: Any = None) -> Path:
    dst.mkdir()
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    edit(config)
    (dst / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    if tokenizer_edit is not None:
        data = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
        tokenizer_edit(data)
        (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return dst


def _strings(c: dict[str, Any]) -> None:
    for key in ("bos_token", "eos_token", "pad_token"):
        c[key] = c[key]["content"]


def _no_flags(c: dict[str, Any]) -> None:
    _strings(c)
    del c["add_bos_token"], c["add_eos_token"]


def _null_post_processor(d: dict[str, Any]) -> None:
    d["post_processor"] = None


CONFIG_VARIANTS = {
    "string_tokens": (_strings, None),
    "no_bos": (lambda c: c.update(add_bos_token=False), None),
    "bos_and_eos": (lambda c: c.update(add_eos_token=True), None),
    "no_pad": (lambda c: c.pop("pad_token"), None),
    "flags_absent_json_post_processor": (_no_flags, None),
    "flags_absent_no_post_processor": (_no_flags, _null_post_processor),
}


@pytest.mark.parametrize("name", sorted(CONFIG_VARIANTS))
def test_config_shapes_match_transformers(tiny_dir: Path, tmp_path: Path, name: str) -> None:
    edit, tokenizer_edit = CONFIG_VARIANTS[name]
    path = _variant(tiny_dir, tmp_path / name, edit, tokenizer_edit)
    ours, hf = Tokenizer.from_dir(path), load_hf(path)
    for text in TEXTS[:5]:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
    assert ours.eos_token_id == hf.eos_token_id and ours.bos_token_id == hf.bos_token_id


def test_flags_apply_when_tokenizer_json_has_no_post_processor(tiny_dir: Path, tmp_path: Path) -> None:
    # Documented difference from transformers 5 (which would add nothing here): honour the flags.
    path = _variant(tiny_dir, tmp_path / "v", lambda c: c.update(add_eos_token=True), _null_post_processor)
    tok = Tokenizer.from_dir(path)
    body = tok.encode("hi", add_special_tokens=False)
    assert tok.encode("hi") == [tok.bos_token_id, *body, tok.eos_token_id]


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_style_matches_transformers(sp_dir: Path, sp_tok: Tokenizer, text: str) -> None:
    hf = load_hf(sp_dir)
    ids = sp_tok.encode(text)
    assert ids == hf.encode(text)
    for skip in (True, False):
        assert sp_tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
