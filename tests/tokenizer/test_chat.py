"""Chat template rendering: transformers' helpers and variables, template shapes, typed errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from isthmus.tokenizer import ChatTemplateError, Tokenizer, TokenizerError, render_chat_template

from tests.tokenizer.conftest import load_hf

HELPERS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m | tojson }}{% endfor %}"
    "{{ {'k': '<&>中'} | tojson(indent=2, sort_keys=true) }}"
    "{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"
    "{% if tools is none and documents is none %}|no tools|{% endif %}"
    "{{ eos_token }}{% if add_generation_prompt %}GEN{% endif %}"
)

MESSAGES = [{"role": "user", "content": 'say "hi" <b>&</b> 你好'}]


def _with_template(src: Path, dst: Path, template: object) -> Path:
    dst.mkdir()
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return dst


def test_helpers_match_transformers(tiny_dir: Path, tmp_path: Path) -> None:
    path = _with_template(tiny_dir, tmp_path / "t", HELPERS_TEMPLATE)
    ours, hf = Tokenizer.from_dir(path), load_hf(path)
    for gen in (True, False):
        text = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen)
        assert text == hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
    assert '"<&>中"' in text  # tojson neither HTML-escapes nor ASCII-escapes


def test_named_template_list_picks_default(tiny_dir: Path, tmp_path: Path) -> None:
    templates = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    path = _with_template(tiny_dir, tmp_path / "t", templates)
    assert Tokenizer.from_dir(path).apply_chat_template(MESSAGES) == "DEFAULT"
    path = _with_template(tiny_dir, tmp_path / "u", [{"name": "tool_use", "template": "TOOLS"}])
    with pytest.raises(TokenizerError, match="default"):
        Tokenizer.from_dir(path)


def test_chat_template_jinja_file_wins(tiny_dir: Path, tmp_path: Path) -> None:
    path = _with_template(tiny_dir, tmp_path / "t", "FROM CONFIG")
    (path / "chat_template.jinja").write_text("FROM FILE {{ messages[0]['content'] }}", encoding="utf-8")
    assert Tokenizer.from_dir(path).apply_chat_template(MESSAGES) == "FROM FILE " + MESSAGES[0]["content"]


def test_raise_exception_and_bad_template_are_typed(tiny_tok: Tokenizer) -> None:
    with pytest.raises(ChatTemplateError, match="Unknown role"):
        tiny_tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="compile"):
        render_chat_template("{% for %}", MESSAGES)


def test_strftime_now_is_available() -> None:
    out = render_chat_template("{{ strftime_now('%Y') }}", MESSAGES)
    assert out.isdigit() and len(out) == 4


def test_sandbox_blocks_attribute_escapes() -> None:
    with pytest.raises(ChatTemplateError):  # jinja2's SecurityError, wrapped
        render_chat_template("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [])


@dataclass
class Msg:
    role: str
    content: str


def test_message_objects_and_bad_messages(tiny_tok: Tokenizer) -> None:
    as_dicts = tiny_tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tiny_tok.apply_chat_template([Msg("user", "hi")]) == as_dicts
    for bad in (
        [{"content": "no role"}],
        [{"role": "user"}],
        ["text"],
        "not a list",
        [{"role": 3, "content": ""}],
    ):
        with pytest.raises(TokenizerError):
            tiny_tok.apply_chat_template(bad)  # type: ignore[arg-type]


def test_extra_variables_pass_through(tiny_tok: Tokenizer) -> None:
    out = render_chat_template(
        "{{ bos_token }}{{ custom }}", [], special_tokens={"bos_token": "B"}, custom="C"
    )
    assert out == "BC"
    with pytest.raises(TokenizerError):
        render_chat_template("{{ x }}", [], x=object())


def test_no_template_is_a_typed_error(tiny_dir: Path, tmp_path: Path) -> None:
    path = _with_template(tiny_dir, tmp_path / "t", None)
    with pytest.raises(TokenizerError, match="chat_template"):
        Tokenizer.from_dir(path).encode_chat(MESSAGES)
