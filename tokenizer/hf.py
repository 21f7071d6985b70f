"""Hugging Face tokenizer folders (`tokenizer.json` + `tokenizer_config.json`) without transformers.

Loading follows transformers 5 (`TokenizersBackend`) so both give the same ids for the same files:
named special tokens are registered as special added tokens, and tokenizer.json's post-processor
decides which bos/eos `encode(add_special_tokens=True)` adds. One deliberate difference: when
tokenizer.json has no post-processor, `add_bos_token`/`add_eos_token` from the config are honoured
(transformers 4 behaviour) instead of adding nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as RawTokenizer

from .bounds import max_bytes_per_token, min_num_tokens
from .chat import render_chat_template
from .errors import TokenizerError

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
DEFAULT_MODEL_MAX_LENGTH = 1 << 30  # tokens; transformers' "very large" stand-in when unset
# Texts at least this long are encoded through `encode_batch`, which releases the GIL while the
# Rust side works (`encode` holds it: a 1M-character text froze every other thread for seconds).
GIL_FREE_MIN_CHARS = 4096  # chars


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} is not a JSON object")
    return data


def _special_token(value: Any, key: str) -> AddedToken | None:
    """A config special token: a plain string, an AddedToken dict (with or without `__type`), or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return AddedToken(
            value["content"],
            single_word=bool(value.get("single_word", False)),
            lstrip=bool(value.get("lstrip", False)),
            rstrip=bool(value.get("rstrip", False)),
            normalized=bool(value.get("normalized", False)),
            special=True,
        )
    raise TokenizerError(f"tokenizer_config.json: {key} must be a string, an AddedToken dict or null")


def _chat_template(config: dict[str, Any], folder: Path) -> str | None:
    # transformers 5 saves the template as chat_template.jinja and prefers that file.
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        template = named.get("default")
        if isinstance(template, str):
            return template
        raise TokenizerError("tokenizer_config.json: chat_template list has no 'default' template")
    raise TokenizerError("tokenizer_config.json: chat_template must be a string or a list of named templates")


def _byte_fallback_ids(tok: RawTokenizer) -> frozenset[int]:
    """Ids of `<0xNN>` tokens when the decoder has a ByteFallback step (sentencepiece style)."""
    if tok.decoder is None:
        return frozenset()
    decoder = json.loads(tok.decoder.__getstate__())
    steps = decoder.get("decoders") or [decoder]
    if not any(isinstance(d, dict) and d.get("type") == "ByteFallback" for d in steps):
        return frozenset()
    ids = (tok.token_to_id(f"<0x{b:02X}>") for b in range(256))
    return frozenset(i for i in ids if i is not None)


class Tokenizer:
    """A model's tokenizer: encode/decode, chat templates, special ids and a fingerprint."""

    def __init__(self, tokenizer_json: bytes, config: dict[str, Any], chat_template: str | None = None):
        try:
            self._tok = RawTokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"invalid tokenizer.json: {exc}") from exc
        self._special: dict[str, AddedToken | None] = {
            key: _special_token(config.get(key), key) for key in SPECIAL_TOKEN_KEYS
        }
        # Registering named special tokens as special (as transformers does) makes
        # decode(skip_special_tokens=True) drop them and makes them match whole in text.
        named = [t for t in self._special.values() if t is not None]
        if named:
            self._tok.add_special_tokens(named)
        if self._id("eos_token") is None:
            raise TokenizerError("tokenizer has no eos_token (needed to end generation)")
        self.add_bos_token = bool(config.get("add_bos_token", False))
        self.add_eos_token = bool(config.get("add_eos_token", False))
        # transformers 5 ignores the flags whenever tokenizer.json exists and lets its post-processor
        # decide; we do the same. Only with no post-processor at all do we honour the flags (as
        # transformers 4's LlamaTokenizerFast did) rather than silently dropping a bos the model expects.
        if self._tok.post_processor is None:
            self._rebuild_post_processor()
        max_len = config.get("model_max_length")
        self.model_max_length = (
            int(max_len) if isinstance(max_len, int | float) and max_len < 1e18 else DEFAULT_MODEL_MAX_LENGTH
        )
        self.chat_template = chat_template
        fingerprint_config = {
            key: (str(tok.content) if tok is not None else None) for key, tok in self._special.items()
        } | {"add_bos_token": self.add_bos_token, "add_eos_token": self.add_eos_token}
        digest = hashlib.sha256(tokenizer_json)
        digest.update(b"\0" + json.dumps(fingerprint_config, sort_keys=True).encode("utf-8"))
        self.fingerprint = digest.hexdigest()
        self.all_special_ids = sorted(
            {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        )
        self._special_id_set = frozenset(self.all_special_ids)
        self.byte_fallback_ids = _byte_fallback_ids(self._tok)
        # Number of ids, added tokens included (transformers' `len(tokenizer)`); fixed after load.
        self.vocab_size: int = int(self._tok.get_vocab_size(with_added_tokens=True))
        # Bytes of input one token covers at most (None: no bound), for refusing long texts early.
        self.max_bytes_per_token: int | None = max_bytes_per_token(
            json.loads(tokenizer_json),
            [{"content": str(t.content), "lstrip": t.lstrip, "rstrip": t.rstrip} for t in named],
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` and (if present) `tokenizer_config.json` / `special_tokens_map.json`."""
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        try:
            tokenizer_json = tok_file.read_bytes()
        except OSError as exc:
            raise TokenizerError(f"cannot read {tok_file}: {exc}") from exc
        config: dict[str, Any] = {}
        map_file = folder / "special_tokens_map.json"
        if map_file.is_file():
            config.update({k: v for k, v in _read_json(map_file).items() if k in SPECIAL_TOKEN_KEYS})
        cfg_file = folder / "tokenizer_config.json"
        if cfg_file.is_file():
            config.update(_read_json(cfg_file))
        return cls(tokenizer_json, config, _chat_template(config, folder))

    def _rebuild_post_processor(self) -> None:
        # Mirrors transformers' update_post_processor: bos/eos from the flags, nothing else.
        bos, eos = self.bos_token, self.eos_token
        bos_id, eos_id = self.bos_token_id, self.eos_token_id
        special: list[tuple[str, int]] = []
        single, pair = "$A:0", "$B:1"
        if self.add_bos_token and bos is not None and bos_id is not None:
            single, pair = f"{bos}:0 {single}", f"{bos}:1 {pair}"
            special.append((bos, bos_id))
        if self.add_eos_token and eos is not None:
            single, pair = f"{single} {eos}:0", f"{pair} {eos}:1"
            special.append((eos, eos_id))
        pair = f"{single} {pair}"
        self._tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special
        )

    def _token(self, key: str) -> str | None:
        tok = self._special[key]
        return None if tok is None else str(tok.content)

    @property
    def bos_token(self) -> str | None:
        return self._token("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self._token("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self._token("pad_token")

    @property
    def unk_token(self) -> str | None:
        return self._token("unk_token")

    def _id(self, key: str) -> int | None:
        tok = self._token(key)
        return None if tok is None else self._tok.token_to_id(tok)

    @property
    def bos_token_id(self) -> int | None:
        """Id of the bos token, or None when the tokenizer has none."""
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int:
        """Id of the eos token (checked at load time)."""
        eos = self._id("eos_token")
        assert eos is not None  # checked in __init__
        return eos

    @property
    def pad_token_id(self) -> int:
        """Id of the pad token; the eos id when the config names no pad token."""
        pad = self._id("pad_token")
        return self.eos_token_id if pad is None else pad

    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, as chat templates see them."""
        return {k: v for k in SPECIAL_TOKEN_KEYS if (v := self._token(k)) is not None}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`; with add_special_tokens, bos/eos as the files say (as transformers)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects str, got {type(text).__name__}")
        if len(text) >= GIL_FREE_MIN_CHARS:  # same ids; other threads run meanwhile
            return list(self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids)
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def min_num_tokens(self, num_bytes: int) -> int:
        """The fewest tokens a text of `num_bytes` UTF-8 bytes encodes to (0: no bound known).

        Special tokens that `encode(add_special_tokens=True)` adds come on top.
        """
        return min_num_tokens(num_bytes, self.max_bytes_per_token)

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        """The ids as a list; TokenizerError if any is not an int in [0, vocab_size)."""
        size = self.vocab_size
        out = list(ids)
        for i in out:
            if type(i) is not int or not 0 <= i < size:  # the plain-int test first: once per token
                if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < size:
                    raise TokenizerError(f"token id {i!r} out of range [0, {size})")
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids` (incomplete UTF-8 at the end shows as U+FFFD, as in transformers)."""
        return str(self._tok.decode(self.check_ids(ids), skip_special_tokens=skip_special_tokens))

    def is_special_id(self, token_id: int) -> bool:
        return token_id in self._special_id_set

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry for an id (byte-level or sentencepiece form), None if unknown."""
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """The prompt text for a conversation (transformers' apply_chat_template(tokenize=False))."""
        if self.chat_template is None:
            raise TokenizerError("tokenizer has no chat_template")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens_map(),
            **kwargs,
        )

    def encode_chat(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, **kwargs: Any
    ) -> list[int]:
        """Prompt ids for a conversation; the template supplies bos, so none is added on top."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text, add_special_tokens=False)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]})"
