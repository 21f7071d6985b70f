"""Turn a validated `GenerateRequest` into the prompt ids and sampling params the engine runs.

A request with a `continuation` (a hand-over from an edge whose answer is already partly
streamed) is answered by continuing from prompt + continuation:

- when the continuation carries token ids and its tokenizer fingerprint equals ours, the ids are
  appended to the prompt ids as they are (exact hand-over, no re-tokenization);
- otherwise its text is appended to the prompt *text* (the chat-templated prompt for `messages`)
  and the whole is tokenized once, so the center sees the tokenization its own model expects.

``sampling.max_tokens`` counts only the tokens the center generates: an edge handing over
subtracts what it already streamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.serving_wire import sampling_params
from isthmus.protocol import ErrorCode, GenerateRequest, ProtocolError, unpack_ids
from isthmus.tokenizer import TokenizerError


class PromptTokenizer(Protocol):
    """What this module needs from `isthmus.tokenizer.Tokenizer`."""

    fingerprint: str
    vocab_size: int

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...


@dataclass(slots=True)
class PreparedRequest:
    prompt_ids: list[int]  # everything the model is prefilled with (prompt + continuation)
    params: SamplingParams
    num_continuation_tokens: int  # of prompt_ids, how many came from the continuation (ids path)
    is_exact_continuation: bool  # continuation appended as token ids (fingerprints matched)


def _chat(req: GenerateRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in req.messages or []]


def prompt_ids_for(req: GenerateRequest, tokenizer: PromptTokenizer) -> tuple[list[int], int, bool]:
    """(prompt ids, continuation tokens appended as ids, whether ids were used)."""
    cont = req.continuation
    use_ids = bool(cont and cont.token_ids and cont.tokenizer_fingerprint == tokenizer.fingerprint)
    text_tail = cont.text if cont is not None and not use_ids else ""
    if req.prompt_ids is not None:
        ids = unpack_ids(req.prompt_ids)
        if text_tail:
            ids = ids + tokenizer.encode(text_tail, add_special_tokens=False)
    elif req.messages is not None:
        if text_tail:
            # The template text already holds BOS (when the model uses one): no second BOS.
            templated = tokenizer.apply_chat_template(_chat(req), add_generation_prompt=True)
            ids = tokenizer.encode(templated + text_tail, add_special_tokens=False)
        else:
            ids = tokenizer.encode_chat(_chat(req))
    else:
        ids = tokenizer.encode((req.prompt or "") + text_tail, add_special_tokens=True)
    num_cont = 0
    if use_ids and cont is not None:
        cont_ids = unpack_ids(cont.token_ids)
        ids = ids + cont_ids
        num_cont = len(cont_ids)
    return ids, num_cont, use_ids


def prepare_request(
    req: GenerateRequest, tokenizer: PromptTokenizer, max_model_len: int | None = None
) -> PreparedRequest:
    """Prompt ids and sampling params for ``req``; raises `ProtocolError` for what cannot run.

    INVALID_MESSAGE: sampling values the engine refuses, token ids outside the vocabulary, an empty
    prompt after tokenization. PROMPT_TOO_LONG: no room left in ``max_model_len`` to generate.
    """
    params = sampling_params(req.sampling, entropy=False)  # nothing reads entropies here
    try:
        ids, num_cont, exact = prompt_ids_for(req, tokenizer)
    except TokenizerError as exc:  # e.g. a chat the template refuses (roles out of order)
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"messages: {exc}") from exc
    if not ids:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "prompt: tokenizes to no tokens")
    # max() is one C loop (a list comprehension over a 1M-token prompt took ~1 s of GIL slices)
    bad = [next(i for i in ids if i >= tokenizer.vocab_size)] if max(ids) >= tokenizer.vocab_size else []
    if bad:
        field = "continuation.token_ids" if exact and max(ids[len(ids) - num_cont :], default=-1) >= \
            tokenizer.vocab_size else "prompt_ids"
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{field}: token id {bad[0]} is outside the vocabulary (size {tokenizer.vocab_size})",
        )
    if max_model_len is not None and len(ids) >= max_model_len:
        raise ProtocolError(
            ErrorCode.PROMPT_TOO_LONG,
            f"prompt: {len(ids)} tokens leaves no room to generate (max_model_len {max_model_len})",
        )
    return PreparedRequest(ids, params, num_cont, exact)
