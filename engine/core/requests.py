"""The scheduler's typed refusals and the checks a request passes before it is queued."""

from __future__ import annotations

from isthmus.engine.core.kv_blocks import KVPayload
from isthmus.engine.core.params import SamplingParams


class SchedulerError(Exception):
    """Base of the scheduler's typed refusals."""


class QueueFull(SchedulerError):
    """The waiting queue holds ``max_waiting`` requests already."""


class PromptTooLong(SchedulerError, ValueError):
    """Prompt (plus resumed output) leaves no room for a token under ``max_model_len``."""


class InvalidRequest(SchedulerError, ValueError):
    """Empty prompt, token id out of range, duplicate id, or an already complete resume."""


def checked_ids(
    prompt_ids: list[int],
    output_ids: list[int],
    params: SamplingParams,
    kv: KVPayload | None,
    vocab_size: int | None,
    max_model_len: int,
) -> list[int]:
    """``prompt_ids + output_ids`` (a resumed request's) once they are fit to queue.

    Raises :class:`InvalidRequest` or :class:`PromptTooLong`.
    """
    if not prompt_ids:
        raise InvalidRequest("prompt is empty")
    all_ids = [*prompt_ids, *output_ids]
    if vocab_size is not None:
        bad = [t for t in all_ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    if len(output_ids) >= params.max_tokens:
        raise InvalidRequest("resumed request already generated max_tokens tokens")
    if len(all_ids) >= max_model_len:
        raise PromptTooLong(f"{len(all_ids)} tokens leave no room under max_model_len {max_model_len}")
    if kv is not None and kv.num_tokens != len(all_ids) - 1:
        raise InvalidRequest(f"kv: {kv.num_tokens} positions, the sequence needs {len(all_ids) - 1}")
    return all_ids
