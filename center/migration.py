"""Live migration on the center: a running request's state out (`Migrated`), and back in.

Token-based: the state is the prompt ids, the ids generated so far, the sampling options (with the
seed the exporting replica drew, so the seeded sampler goes on at draw ``len(generated)``) and the
text already streamed (so the target's detokenizer and stop-string matcher pick up where the
source's were: text held back as a possible stop-string start is emitted and matched across the
join). The target recomputes the KV cache in one prefill.

A migrated request comes back in through the hand-over path: a `GenerateRequest` whose
`continuation` has ``is_migration=True`` and the generated ids; `resume_state` turns it into the
engine's `RequestState`. One way to continue a request, two meanings of the ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.state import RequestState
from isthmus.protocol import (
    Continuation,
    ErrorCode,
    GenerateRequest,
    Migrated,
    ProtocolError,
    SamplingOptions,
    TokenChunk,
    pack_ids,
)

MIGRATED_REASON = "migrated"


@dataclass(slots=True)
class StreamedSoFar:
    """What one Generate stream has sent, measured against the engine's state of the request.

    ``base_ids`` / ``base_text``: ids and text the engine's state counts that this stream did not
    send (a resumed request's earlier answer; a hand-over's text). ``handover_text``: the part of
    ``base_text`` that is prompt, not answer (an edge's hand-over), left out of the exported text.
    """

    base_ids: int = 0
    base_text: str = ""
    handover_text: str = ""
    num_ids: int = 0
    text: list[str] = field(default_factory=list)

    def add(self, num_ids: int, text: str) -> None:
        self.num_ids += num_ids
        if text:
            self.text.append(text)

    def tail(self, request_id: str, state: RequestState) -> TokenChunk | None:
        """The chunk of what ``state`` holds that this stream has not sent yet (None: nothing)."""
        ids = state.output_ids[self.base_ids + self.num_ids :]
        sent = len(self.base_text) + sum(len(t) for t in self.text)
        text = state.text[sent:]
        if not ids and not text:
            return None
        return TokenChunk(id=request_id, token_ids=pack_ids(ids), text=text, tier="center")


def migrated_message(
    request_id: str,
    state: RequestState,
    sampling: SamplingOptions,
    fingerprint: str,
    handover_text: str = "",
) -> Migrated:
    """The wire form of an exported ``state`` of the request that asked with ``sampling``."""
    text = state.text
    if handover_text and text.startswith(handover_text):
        text = text[len(handover_text) :]  # the hand-over's text is prompt now, not answer
    return Migrated(
        id=request_id,
        prompt_ids=pack_ids(state.prompt_ids),
        sampling=msgspec.structs.replace(sampling, seed=state.params.seed),
        continuation=Continuation(
            text=text,
            token_ids=pack_ids(state.output_ids),
            tokenizer_fingerprint=fingerprint,
            reason=MIGRATED_REASON,
            is_migration=True,
        ),
    )


def is_migration(req: GenerateRequest) -> bool:
    """Whether ``req`` continues a migrated request (rather than an ordinary hand-over)."""
    return req.continuation is not None and req.continuation.is_migration


def resume_state(
    req: GenerateRequest, prompt_ids: list[int], num_continuation: int, is_exact: bool, params: SamplingParams
) -> RequestState:
    """The engine state that continues migrated ``req`` (prepared into ``prompt_ids`` + ``params``).

    Raises `ProtocolError` INVALID_MESSAGE when the ids could not be used as they are: a migration
    needs the same tokenizer (fingerprints) and the generated ids themselves.
    """
    cont = req.continuation
    if cont is None or not is_exact or num_continuation == 0:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "continuation: a migration needs its token ids and the same tokenizer "
            "(tokenizer_fingerprint differs or token_ids is empty)",
        )
    split = len(prompt_ids) - num_continuation
    return RequestState(
        request_id=req.id,
        prompt_ids=prompt_ids[:split],
        output_ids=prompt_ids[split:],
        params=params,
        text=cont.text,
        priority=req.priority,
    )
