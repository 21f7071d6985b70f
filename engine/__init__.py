"""isthmus.engine: model runner, continuous-batching scheduler, sampler, offline and async APIs.

Heavy parts (torch, the model) load lazily: ``from isthmus.engine import AsyncEngine`` imports
the async engine module only when that name is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EngineOptions": "isthmus.engine.core.options",
    "SamplingParams": "isthmus.engine.core.params",
    "SchedulePlan": "isthmus.engine.core.plan",
    "ScheduledSeq": "isthmus.engine.core.plan",
    "RunOutput": "isthmus.engine.core.plan",
    "SampledToken": "isthmus.engine.core.plan",
    "EngineOutput": "isthmus.engine.core.outputs",
    "EngineLoad": "isthmus.engine.core.outputs",
    "RequestOutput": "isthmus.engine.core.outputs",
    "TokenUsage": "isthmus.engine.core.outputs",
    "Usage": "isthmus.engine.core.outputs",  # deprecated alias of TokenUsage
    "RequestState": "isthmus.engine.core.state",
    "InvalidState": "isthmus.engine.core.state",
    "Scheduler": "isthmus.engine.core.scheduler",
    "SchedulerError": "isthmus.engine.core.scheduler",
    "QueueFull": "isthmus.engine.core.scheduler",
    "PromptTooLong": "isthmus.engine.core.scheduler",
    "InvalidRequest": "isthmus.engine.core.scheduler",
    "LLM": "isthmus.engine.core.llm",
    "AsyncEngine": "isthmus.engine.core.async_engine",
    "EngineRequest": "isthmus.engine.core.async_engine",
    "EngineNotRunning": "isthmus.engine.core.async_engine",
    "params_from_options": "isthmus.engine.core.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'isthmus.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
