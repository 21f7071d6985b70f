"""Host work overlapped with the device (`ModelRunner.launch`, `EngineCore.step`), proved on CPU.

A wrapper runner reports every step as still running on the device (`overlapped`) and computes
it only when its result is asked for, as a CUDA graph step would finish. The engine then processes
each step's outputs during the next step: the generated tokens, text, finish reasons, usage and
exported states must equal those of the plain synchronous engine, stop strings included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from isthmus.engine.core.llm import LLM
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.core.step_handle import StepHandle
from isthmus.engine.runner.model_runner import ModelRunner


class DeferredRunner:
    """Every step 'still running' when launched; computed when its result is asked for."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.num_kv_blocks, self.block_size = runner.num_kv_blocks, runner.block_size
        self.max_model_len, self.vocab_size = runner.max_model_len, runner.vocab_size
        self.launched = 0

    def run(self, plan: SchedulePlan):  # type: ignore[no-untyped-def]
        return self.runner.run(plan)

    def launch(self, plan: SchedulePlan) -> StepHandle:
        self.launched += 1
        decode_only = all(len(s.token_ids) == 1 for s in plan.seqs)
        return StepHandle(lambda: self.runner.run(plan), overlapped=decode_only)


def _llm(path: Path, overlapped: bool) -> tuple[LLM, DeferredRunner | None]:
    opts = EngineOptions(model=str(path), block_size=4, num_kv_blocks=128, max_num_seqs=4,
                         max_num_batched_tokens=64)
    runner = ModelRunner(opts)
    wrapped = DeferredRunner(runner) if overlapped else None
    llm = LLM(str(path), runner=wrapped or runner, block_size=4, num_kv_blocks=128, max_num_seqs=4,
              max_num_batched_tokens=64)
    return llm, wrapped


def _requests(llm: LLM) -> tuple[list[list[int]], list[SamplingParams]]:
    plain = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (3, 9, 14)]
    probe = llm.generate([[5, 6, 7, 8]], plain[1])[0].text  # a stop string the model will produce
    stop = probe[len(probe) // 2 : len(probe) // 2 + 2] or "a"
    params = [*plain, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop]),
              SamplingParams(max_tokens=10, temperature=0.9, seed=3)]
    prompts = [[3, 17, 345, 12], [0, 613, 240], [31, 8, 1000, 64, 129, 3], [5, 6, 7, 8], [9, 9, 2]]
    return prompts, params


def test_overlapped_engine_gives_the_synchronous_engines_results(tiny_llama: Path) -> None:
    sync_llm, _ = _llm(tiny_llama, overlapped=False)
    prompts, params = _requests(sync_llm)
    expected = sync_llm.generate(prompts, params)
    llm, runner = _llm(tiny_llama, overlapped=True)
    got = llm.generate(prompts, params)
    assert runner is not None and runner.launched > 0
    assert any(r.finish_reason == "stop" and len(r.token_ids) < 12 for r in expected)  # the stop string hit
    for a, b in zip(got, expected, strict=True):
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
        assert a.usage.completion_tokens == b.usage.completion_tokens == len(b.token_ids)
        assert a.logprobs == pytest.approx(b.logprobs)
    assert not llm.core.has_unfinished


def test_export_state_includes_the_deferred_step(tiny_llama: Path) -> None:
    llm, _ = _llm(tiny_llama, overlapped=True)
    core = llm.core
    core.add("r", [3, 17, 345, 12], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    streamed: list[int] = []
    text = ""
    for _ in range(6):
        for out in core.step():
            streamed += out.new_token_ids
            text += out.text_delta
    state = core.export_state("r")
    assert core._deferred == []
    assert len(state.output_ids) > len(streamed)  # the last step's token had not been streamed yet
    for out in core.step():  # ... and comes out with the next step, exactly once
        streamed += out.new_token_ids
        text += out.text_delta
    assert streamed[: len(state.output_ids)] == state.output_ids
    assert text.startswith(state.text)
