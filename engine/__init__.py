"""isthmus.engine: model runner, continuous-batching scheduler, sampler, offline and async APIs.

Heavy parts (torch, the model) load lazily: ``from isthmus.engine import AsyncEngine`` imports
the async engine module only when that name is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EngineOptions": "isthmus.engine.options",
    "SamplingParams": "isthmus.engine.params",
    "SchedulePlan": "isthmus.engine.plan",
    "ScheduledSeq": "isthmus.engine.plan",
    "RunOutput": "isthmus.engine.plan",
    "SampledToken": "isthmus.engine.plan",
    "EngineOutput": "isthmus.engine.outputs",
    "EngineLoad": "isthmus.engine.outputs",
    "RequestOutput": "isthmus.engine.outputs",
    "TokenUsage": "isthmus.engine.outputs",
    "Usage": "isthmus.engine.outputs",  # deprecated alias of TokenUsage
    "RequestState": "isthmus.engine.state",
    "InvalidState": "isthmus.engine.state",
    "Scheduler": "isthmus.engine.scheduler",
    "SchedulerError": "isthmus.engine.scheduler",
    "QueueFull": "isthmus.engine.scheduler",
    "PromptTooLong": "isthmus.engine.scheduler",
    "InvalidRequest": "isthmus.engine.scheduler",
    "LLM": "isthmus.engine.llm",
    "AsyncEngine": "isthmus.engine.async_engine",
    "EngineRequest": "isthmus.engine.async_engine",
    "EngineNotRunning": "isthmus.engine.async_engine",
    "params_from_options": "isthmus.engine.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'isthmus.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
