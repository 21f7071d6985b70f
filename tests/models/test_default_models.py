"""The committed default checkpoints: they load, their manifests verify, and they speak English."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from isthmus.engine.model.checkpoint import ChecksumError, verify_checksums
from isthmus.engine.model.config import ModelConfig
from isthmus.models import CENTER_DEFAULT, EDGE_DEFAULT, default_model_path
from isthmus.models.english import corpus_vocabulary, count_english
from isthmus.tokenizer import Tokenizer

FOLDERS = (EDGE_DEFAULT, CENTER_DEFAULT)
MAX_TOTAL_BYTES = 15 * 1024 * 1024  # both models together: small enough for the repository


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_manifest_verifies_and_lists_every_file(folder: Path) -> None:
    verify_checksums(folder)
    listed = {line.split("  ", 1)[1] for line in (folder / "sha256sums.txt").read_text().splitlines()}
    assert listed == {p.name for p in folder.iterdir()} - {"sha256sums.txt"}


def test_a_changed_weights_file_fails_verification(tmp_path: Path) -> None:
    copy = tmp_path / "edge"
    copy.mkdir()
    for p in EDGE_DEFAULT.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"model\.safetensors"):
        verify_checksums(copy)


def test_both_share_one_tokenizer_with_the_chat_template() -> None:
    edge, center = Tokenizer.from_dir(EDGE_DEFAULT), Tokenizer.from_dir(CENTER_DEFAULT)
    same = (EDGE_DEFAULT / "tokenizer.json").read_bytes() == (CENTER_DEFAULT / "tokenizer.json").read_bytes()
    assert same
    prompt = edge.apply_chat_template([{"role": "user", "content": "What is the json module?"}])
    assert prompt.endswith("User: What is the json module?\n\nAssistant:")
    assert edge.encode_chat([{"role": "user", "content": "hi"}]) == center.encode_chat(
        [{"role": "user", "content": "hi"}]
    )


def test_sizes_and_the_center_is_larger_and_better() -> None:
    edge, center = (json.loads((f / "training.json").read_text()) for f in FOLDERS)
    assert sum(p.stat().st_size for f in FOLDERS for p in f.iterdir()) < MAX_TOTAL_BYTES
    assert center["num_parameters"] >= 3 * edge["num_parameters"]
    assert center["held_out_perplexity"] < 0.9 * edge["held_out_perplexity"]
    for folder, facts in zip(FOLDERS, (edge, center), strict=True):
        config = ModelConfig.from_pretrained(folder)
        assert config.hidden_size == facts["shape"]["hidden_size"]
        card = (folder / "README.md").read_text()
        assert f"**{facts['held_out_perplexity']}**" in card and "PSF" in card


def test_default_model_path_names_the_tiers() -> None:
    assert default_model_path("edge") == EDGE_DEFAULT
    with pytest.raises(ValueError, match="edge"):
        default_model_path("middle")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_greedy_answers_are_mostly_english_words(folder: Path) -> None:
    from isthmus.cli.demo import FREQUENCY_PENALTY, PRESENCE_PENALTY
    from isthmus.engine.core.llm import LLM
    from isthmus.engine.core.params import SamplingParams

    llm = LLM(str(folder), verify_checksums=True)
    params = SamplingParams(
        max_tokens=32, temperature=0.0, presence_penalty=PRESENCE_PENALTY, frequency_penalty=FREQUENCY_PENALTY
    )
    questions = ("What does the assert statement do?", "What is the json module?")
    prompts = [[{"role": "user", "content": q}] for q in questions]
    texts = [out.text for out in llm.generate(prompts, params)]
    count = count_english(texts, corpus_vocabulary())
    assert count.num_replacement == 0, texts
    assert count.num_words >= 10 and count.fraction >= 0.7, (count, texts)
    assert all(re.search(r"[a-z]{3,} [a-z]{2,}", t) for t in texts), texts
