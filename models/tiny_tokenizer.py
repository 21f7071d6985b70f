"""Write a tiny DeepSeek-style byte-level BPE tokenizer for tests and demos.

The tokenizer is trained with the `tokenizers` library on `models/data/corpus.txt` (English, Chinese,
code, math and emoji written for this project), so both English and Chinese text tokenize into
sensible pieces. The pre-tokenizer and decoder are byte level: every UTF-8 string, including
characters never seen in the corpus, round-trips through its bytes.

Special tokens and the chat template follow DeepSeek-LLM-chat: `<｜begin▁of▁sentence｜>` (bos),
`<｜end▁of▁sentence｜>` (eos, also pad), "User: ...\\n\\nAssistant: ...<eos>" turns.
The R1-Distill turn markers (`<｜User｜>`, `<｜Assistant｜>`, `<think>`, `</think>`) are in the
vocabulary as non-special added tokens, so tests can swap in an R1-style template.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
# Added (not special) tokens, as in DeepSeek-R1-Distill: they survive skip_special_tokens.
R1_TOKENS = ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>")

MODEL_MAX_LENGTH = 4096  # tokens
MIN_VOCAB_SIZE = 256 + 2 + len(R1_TOKENS)  # every byte, bos/eos, the R1 markers

CORPUS_PATH = Path(__file__).parent / "data" / "corpus.txt"

# DeepSeek-LLM-chat's prompt shape: bos, optional system text, "User: ...\n\n", "Assistant: ...<eos>".
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _added_token_dict(content: str) -> dict[str, object]:
    # The shape transformers writes for AddedToken in tokenizer_config.json.
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def build_tiny_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Train the tiny byte-level BPE in memory (deterministic for a given corpus and size)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # Digits one by one (as DeepSeek does), then GPT-2 style byte-level splitting.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[BOS_TOKEN, EOS_TOKEN, *R1_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = CORPUS_PATH.read_text(encoding="utf-8")
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"corpus too small for vocab_size={vocab_size}: trained {tok.get_vocab_size()} tokens"
        )
    # The R1 markers are ordinary added tokens there (special=False); re-add them that way.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in R1_TOKENS])
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tok


def tokenizer_config() -> dict[str, object]:
    """The tokenizer_config.json written beside tokenizer.json."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token_dict(BOS_TOKEN),
        "eos_token": _added_token_dict(EOS_TOKEN),
        "pad_token": _added_token_dict(EOS_TOKEN),
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "sp_model_kwargs": {},
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_tiny_tokenizer(path: Path, vocab_size: int = 1024) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` into the folder `path` (created if missing).

    Byte-for-byte deterministic: the same corpus and vocab_size always give the same files.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(vocab_size)
    (path / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = json.dumps(tokenizer_config(), indent=2, ensure_ascii=False)
    (path / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")
