"""A request exported mid-stream from one engine and resumed on another is token-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from isthmus.engine.core.async_engine import AsyncEngine, EngineRequest
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.state import RequestState

from tests.center.conftest import engine_options

PROMPT = [5, 17, 99, 300, 42, 7, 8]


async def _full(engine: AsyncEngine, rid: str, params: SamplingParams) -> list[int]:
    ids: list[int] = []
    async for out in engine.generate(EngineRequest(rid, PROMPT, params)):
        ids.extend(out.new_token_ids)
    return ids


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=77, ignore_eos=True),
        SamplingParams(max_tokens=24, temperature=1.0, repetition_penalty=1.3, seed=5, ignore_eos=True),
    ],
    ids=["greedy", "seeded", "seeded-penalty"],
)
async def test_export_then_resume_elsewhere_is_token_identical(
    tp_llama: Path, params: SamplingParams
) -> None:
    source, target = AsyncEngine(engine_options(tp_llama)), AsyncEngine(engine_options(tp_llama))
    await source.start()
    await target.start()
    try:
        expected = await _full(source, "whole", params)
        assert len(expected) == params.max_tokens

        stream = source.generate(EngineRequest("moving", PROMPT, params))
        seen: list[int] = []
        async for out in stream:
            seen.extend(out.new_token_ids)
            if len(seen) >= 5:
                break
        state = source.export_state("moving")
        await stream.aclose()  # the source forgets it (blocks freed)
        assert state.output_ids[: len(seen)] == seen and len(state.output_ids) < params.max_tokens
        # The state crosses machines as a plain dict.
        moved = RequestState.from_dict(state.to_dict())

        resumed: list[int] = []
        async for out in target.generate(EngineRequest("moving", [], params, resume=moved)):
            resumed.extend(out.new_token_ids)
        assert moved.output_ids + resumed == expected
        load = source.load()
        assert load.num_free_kv_blocks == load.num_total_kv_blocks
    finally:
        await source.stop()
        await target.stop()
