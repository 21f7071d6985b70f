"""`EngineCore.step` with a runner whose decode steps stay "on the device" after `launch`.

The engine then plans each next step while the current one runs and launches it right after the
`postprocess` (`Scheduler.schedule_ahead`). Its outputs must equal the synchronous engine's,
with stop tokens, stop strings, length limits and a queue of waiting requests; an abort while a
planned step is in flight frees everything and stops the stream.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from isthmus.engine.core.ahead import AHEAD_TOKEN
from isthmus.engine.core.core import EngineCore
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.outputs import EngineOutput
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput, SampledToken, SchedulePlan
from isthmus.engine.core.step_handle import StepHandle


class FakeRunner:
    """Deterministic tokens from each row's history; ``launch`` (when ``overlap``) computes a decode
    step only when its result is asked for, as a device step would finish then."""

    num_kv_blocks, block_size, max_model_len, vocab_size = 96, 4, 96, 200

    def __init__(self, overlap: bool) -> None:
        if overlap:
            self.launch = self._launch
        self.launched_rows = 0

    def run(self, plan: SchedulePlan) -> RunOutput:
        out = RunOutput()
        for s in plan.seqs:
            assert AHEAD_TOKEN not in s.token_ids
            if s.do_sample:  # the history seen when the step computes: it must hold the fed token
                seen = s.history_ids[: s.start_pos + len(s.token_ids)]
                assert seen[-len(s.token_ids) :] == s.token_ids
                tok = (sum(seen) * 31 + s.num_generated * 7) % self.vocab_size
                out.sampled[s.seq_id] = SampledToken(tok, -0.5, 0.1)
        return out

    def _launch(self, plan: SchedulePlan) -> StepHandle:
        self.launched_rows += len(plan.seqs)
        assert all(AHEAD_TOKEN not in s.token_ids for s in plan.seqs)
        return StepHandle(lambda: self.run(plan), overlapped=all(len(s.token_ids) == 1 for s in plan.seqs))


def _core(path: Path, overlap: bool) -> EngineCore:
    opts = EngineOptions(model=str(path), block_size=4, num_kv_blocks=96, max_num_seqs=3,
                         max_num_batched_tokens=32)
    return EngineCore(opts, runner=FakeRunner(overlap))  # type: ignore[arg-type]


def _collect(core: EngineCore, outputs: list[EngineOutput], got: dict[str, list]) -> None:
    for out in outputs:
        entry = got.setdefault(out.request_id, [[], "", None])
        entry[0] += out.new_token_ids
        entry[1] += out.text_delta
        assert entry[2] is None, "output after the finish"
        entry[2] = out.finish_reason


def _generate(core: EngineCore, stop_text: str) -> dict[str, list]:
    eos = next(iter(core.scheduler.eos_token_ids))
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (1, 2, 9, 17)]
    params += [SamplingParams(max_tokens=15, temperature=0.0, stop=[stop_text], ignore_eos=True),
               SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=[eos, 17, 99])]
    for i, p in enumerate(params):
        core.add(f"r{i}", [3 + i, 40, 7 * i + 1, 9], p)
    got: dict[str, list] = {}
    for _ in range(200):
        if not core.has_unfinished:
            break
        _collect(core, core.step(), got)
    assert not core.has_unfinished
    return got


def test_planned_ahead_engine_gives_the_synchronous_engines_outputs(tiny_llama: Path) -> None:
    probe = _generate(_core(tiny_llama, overlap=False), "\0")["r4"][1]
    stop_text = probe[len(probe) // 2 : len(probe) // 2 + 2]  # text the run produces mid-answer
    expected = _generate(_core(tiny_llama, overlap=False), stop_text)
    core = _core(tiny_llama, overlap=True)
    planned = []
    schedule_ahead = core.scheduler.schedule_ahead
    core.scheduler.schedule_ahead = lambda *a: planned.append(schedule_ahead(*a)) or planned[-1]  # type: ignore[method-assign]
    got = _generate(core, stop_text)
    assert got == expected
    assert expected["r4"][2] == "stop" and len(expected["r4"][0]) < 15  # the stop string cut it
    assert any(p is not None and p.seqs for p in planned)
    bm = core.scheduler.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_total_blocks


def test_abort_while_a_planned_step_is_in_flight(tiny_llama: Path) -> None:
    core = _core(tiny_llama, overlap=True)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    core.add("a", [5, 6, 7], params)
    core.add("b", [8, 9, 10, 11], params)
    got: dict[str, list] = {}
    for _ in range(4):
        _collect(core, core.step(), got)
    assert core._inflight is not None and core.has_unfinished
    assert core.abort("a")
    streamed = len(got["a"][0])
    while core.has_unfinished:
        _collect(core, core.step(), got)
    assert got["b"][2] == "length" and len(got["b"][0]) == 40
    assert got["a"][2] is None and streamed <= len(got["a"][0]) <= streamed + 1  # a deferred token at most
    bm = core.scheduler.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_total_blocks


@pytest.mark.parametrize("plan_ahead", [True, False])
def test_plan_ahead_switch(tiny_llama: Path, plan_ahead: bool) -> None:
    core = _core(tiny_llama, overlap=True)
    core.plan_ahead = plan_ahead
    core.add("a", [5, 6, 7], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    seen_inflight = False
    while core.has_unfinished:
        core.step()
        seen_inflight |= core._inflight is not None
    assert seen_inflight == plan_ahead
