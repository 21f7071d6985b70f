"""Build what the edge sends the center (pure functions, no I/O).

An escalated request is the app's own request with `tier="center"`, no API key (edge and center
trust each other over their own TLS link) and the deadline that is left. A hand-over mid-answer adds
a `Continuation`: the text already streamed to the app, plus its token ids only when the center
reported the same tokenizer fingerprint as the edge (otherwise ids mean different things there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from isthmus.protocol import Continuation, GenerateRequest, pack_ids

if TYPE_CHECKING:
    from .relay import CenterStream
    from .router import Decision


def escalated_request(
    req: GenerateRequest,
    *,
    timeout_ms: int | None,
    continuation: Continuation | None = None,
    max_tokens: int | None = None,
    prompt_text: str | None = None,
) -> GenerateRequest:
    """The request to send the center.

    `prompt_text` replaces packed `prompt_ids` when the center's tokenizer differs from the edge's.
    `max_tokens` is what is left of the app's budget after tokens the edge already produced.
    """
    sampling = req.sampling
    if max_tokens is not None:
        sampling = msgspec.structs.replace(sampling, max_tokens=max(1, max_tokens))
    changes: dict[str, object] = {
        "tier": "center",
        "api_key": None,
        "timeout_ms": timeout_ms,
        "sampling": sampling,
        "continuation": continuation if continuation is not None else req.continuation,
    }
    if prompt_text is not None and req.prompt_ids is not None:
        changes["prompt_ids"] = None
        changes["prompt"] = prompt_text
    return msgspec.structs.replace(req, **changes)


def make_continuation(
    text: str,
    token_ids: list[int],
    *,
    edge_fingerprint: str,
    center_fingerprint: str | None,
    reason: str,
) -> Continuation:
    """The answer so far; ids travel only when both tokenizers are the same one."""
    same = bool(edge_fingerprint) and edge_fingerprint == center_fingerprint
    return Continuation(
        text=text,
        token_ids=pack_ids(token_ids) if same else b"",
        tokenizer_fingerprint=edge_fingerprint if same else "",
        reason=reason,
    )


def remaining_ms(deadline: float | None, now: float) -> int | None:
    """Milliseconds left before `deadline` (loop/monotonic seconds), at least 1; None: no deadline."""
    if deadline is None:
        return None
    return max(1, int((deadline - now) * 1000))


@dataclass(frozen=True, slots=True)
class HandOver:
    """An answer leaving the edge for the center: where it goes, why, when, and what was already sent.

    `when` is "after_prefill" (the prompt looked harder than the router thought, nothing streamed
    yet) or "mid_answer" (the edge's confidence collapsed; `num_edge_tokens` were streamed).
    """

    center: CenterStream  # the open center stream and its first message
    decision: Decision  # the route reported from now on
    when: str
    num_edge_tokens: int
