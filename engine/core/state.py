"""A request's resumable state: everything another engine needs to continue it token-identically.

Generated ids double as the seeded sampler's position (``num_generated``): the draw for the n-th
token depends only on (seed, n), and unseeded requests got a seed at admission, so a resumed
request samples exactly what the original engine would have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from isthmus.engine.core.params import SamplingParams

STATE_VERSION = 1


class InvalidState(ValueError):
    """A state dict that is malformed or from an unknown version."""


@dataclass(slots=True)
class RequestState:
    request_id: str
    prompt_ids: list[int]
    output_ids: list[int]
    params: SamplingParams  # seed always set once the request was admitted
    text: str = ""  # text already emitted to the client
    priority: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # caller's own fields (e.g. route)

    @property
    def num_generated(self) -> int:
        """The seeded sampler's position for the next draw."""
        return len(self.output_ids)

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
        }

    @classmethod
    def from_dict(cls, data: Any) -> RequestState:
        if not isinstance(data, dict):
            raise InvalidState("state must be a dict")
        if data.get("version") != STATE_VERSION:
            raise InvalidState(f"unsupported state version {data.get('version')!r}")
        try:
            ids = [data["prompt_ids"], data["output_ids"]]
            if not all(isinstance(x, list) and all(type(t) is int for t in x) for x in ids):
                raise InvalidState("prompt_ids and output_ids must be lists of ints")
            raw = data["params"]
            if not isinstance(raw, dict):
                raise InvalidState("params must be a dict")
            names = {f.name for f in dataclasses.fields(SamplingParams)}
            unknown = set(raw) - names
            if unknown:
                raise InvalidState(f"unknown sampling params {sorted(unknown)}")
            params = SamplingParams(**raw)
            return cls(
                request_id=str(data["request_id"]),
                prompt_ids=ids[0],
                output_ids=ids[1],
                params=params,
                text=str(data.get("text", "")),
                priority=int(data.get("priority", 0)),
                extra=dict(data.get("extra") or {}),
            )
        except KeyError as e:
            raise InvalidState(f"missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, InvalidState):
                raise
            raise InvalidState(str(e)) from None
