"""Tokenizer folders for the tokenizer tests: the tiny DeepSeek-style BPE, an R1-style config, and a
LLaMA-2-style sentencepiece (Metaspace + byte fallback) tokenizer trained on the same corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from isthmus.models.tiny_tokenizer import CORPUS_PATH, write_tiny_tokenizer
from isthmus.tokenizer import Tokenizer
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

# Shaped like DeepSeek-R1-Distill's template: system prompt hoisted through a namespace, turn
# markers as added tokens, reasoning stripped from past assistant turns, "<think>\n" to start.
R1_TEMPLATE = """{% if not add_generation_prompt is defined %}
{% set add_generation_prompt = false %}
{% endif %}
{% set ns = namespace(system_prompt='') %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{% endif %}
{%- endfor %}
{{ bos_token }}{{ ns.system_prompt }}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '<｜User｜>' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {%- set content = message['content'] %}
        {%- if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}
        {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"""

SP_SPECIALS = ["<unk>", "<s>", "</s>"]


def write_sentencepiece_style(path: Path, vocab_size: int = 600) -> None:
    """A LLaMA-2-style tokenizer: Metaspace pieces, <0xNN> byte fallback, decoder strips one space."""
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = RawTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SP_SPECIALS + byte_tokens,
        limit_alphabet=120,  # rarer characters (most Chinese) must go through byte fallback
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS_PATH.read_text(encoding="utf-8").split("\n\n"), trainer=trainer)
    # As in converted LLaMA tokenizer.json files: the post-processor adds <s>.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    data = json.loads(tok.to_str())
    # Byte tokens are ordinary vocabulary entries in sentencepiece conversions, not added tokens.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in SP_SPECIALS]
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_tok")
    write_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_tok(tiny_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="session")
def r1_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("r1_tok")
    shutil.copy(tiny_dir / "tokenizer.json", path / "tokenizer.json")
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = R1_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sp_tok")
    write_sentencepiece_style(path)
    return path


@pytest.fixture(scope="session")
def sp_tok(sp_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(sp_dir)


def load_hf(path: Path):  # type: ignore[no-untyped-def]
    """transformers' AutoTokenizer for the same folder (the reference we must agree with)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path))
