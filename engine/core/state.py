"""A request's state: everything another engine needs to continue it, the one way to do so.

Two producers, one consumer (`EngineCore.add(resume=...)`):

- live migration: `EngineCore.export_state` snapshots a running request. Generated ids double as
  the seeded sampler's position (``num_generated``): the draw for the n-th token depends only on
  (seed, n), and unseeded requests got a seed at admission, so a resumed request samples exactly
  what the original engine would have.
- a hand-over (`RequestState.handed_over`): another engine began the answer and streamed ``text``
  of it; its ids become the end of the prompt (``num_answer_prompt_ids``), so the sampler starts
  afresh at draw 0 and ``max_tokens`` counts only the tokens generated here.

Either way ``text`` is what the client received of the ids it covers (``streamed_ids``): the
resuming engine replays those ids through its detokenizer, so a character left half-done is
completed and text held back as a possible start of a stop string is emitted first and matched
across the join. Later fields (e.g. a KV payload) go in ``extra`` or as new optional fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from isthmus.engine.core.params import SamplingParams

STATE_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # version 1 had no num_answer_prompt_ids (it was always 0)


class InvalidState(ValueError):
    """A state dict that is malformed or from an unknown version."""


@dataclass(slots=True)
class RequestState:
    request_id: str
    prompt_ids: list[int]
    output_ids: list[int]
    params: SamplingParams  # seed always set once the request was admitted
    text: str = ""  # text already emitted to the client, of `streamed_ids`
    priority: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # caller's own fields (e.g. route)
    # The last that many prompt ids are an answer begun elsewhere (a hand-over): text, not prompt.
    num_answer_prompt_ids: int = 0

    @classmethod
    def handed_over(
        cls,
        request_id: str,
        prompt_ids: list[int],
        answer_ids: list[int],
        text: str,
        params: SamplingParams,
        *,
        priority: int = 0,
    ) -> RequestState:
        """The state that continues an answer another engine began (``answer_ids``) and streamed
        ``text`` of. The answer is prompt to this engine: nothing counts as generated here yet."""
        return cls(
            request_id=request_id,
            prompt_ids=[*prompt_ids, *answer_ids],
            output_ids=[],
            params=params,
            text=text,
            priority=priority,
            num_answer_prompt_ids=len(answer_ids),
        )

    @property
    def num_generated(self) -> int:
        """The seeded sampler's position for the next draw."""
        return len(self.output_ids)

    @property
    def streamed_ids(self) -> list[int]:
        """The ids whose text the client received (``text``): answer prompt ids, then output ids."""
        split = len(self.prompt_ids) - max(0, min(self.num_answer_prompt_ids, len(self.prompt_ids)))
        return [*self.prompt_ids[split:], *self.output_ids]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str/int/float/bool/list values (msgpack- and JSON-friendly)."""
        return {
            "version": STATE_VERSION,
            "request_id": self.request_id,
            "prompt_ids": list(self.prompt_ids),
            "output_ids": list(self.output_ids),
            "params": dataclasses.asdict(self.params),
            "text": self.text,
            "priority": self.priority,
            "extra": dict(self.extra),
            "num_answer_prompt_ids": self.num_answer_prompt_ids,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RequestState:
        """The state ``to_dict`` wrote (this version or an older one); raises `InvalidState`."""
        if not isinstance(data, dict):
            raise InvalidState("state must be a dict")
        if data.get("version") not in SUPPORTED_VERSIONS:
            raise InvalidState(f"unsupported state version {data.get('version')!r}")
        try:
            ids = [data["prompt_ids"], data["output_ids"]]
            if not all(isinstance(x, list) and all(type(t) is int for t in x) for x in ids):
                raise InvalidState("prompt_ids and output_ids must be lists of ints")
            num_answer = data.get("num_answer_prompt_ids", 0)
            if type(num_answer) is not int or not 0 <= num_answer <= len(ids[0]):
                raise InvalidState("num_answer_prompt_ids must be an int in [0, len(prompt_ids)]")
            return cls(
                request_id=str(data["request_id"]),
                prompt_ids=ids[0],
                output_ids=ids[1],
                params=_params_from_dict(data["params"]),
                text=str(data.get("text", "")),
                priority=int(data.get("priority", 0)),
                extra=dict(data.get("extra") or {}),
                num_answer_prompt_ids=num_answer,
            )
        except KeyError as e:
            raise InvalidState(f"missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, InvalidState):
                raise
            raise InvalidState(str(e)) from None


def _params_from_dict(raw: Any) -> SamplingParams:
    if not isinstance(raw, dict):
        raise InvalidState("params must be a dict")
    unknown = set(raw) - {f.name for f in dataclasses.fields(SamplingParams)}
    if unknown:
        raise InvalidState(f"unknown sampling params {sorted(unknown)}")
    return SamplingParams(**raw)
