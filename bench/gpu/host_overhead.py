"""Host (Python) cost per engine step around the model, on CPU: the part a CUDA graph cannot hide.

A runner that returns at once isolates the host work of a step: scheduling, postprocessing,
output processing (detokenization, stop strings) and the offline loop around them. Printed:
  host     ms per step with that runner (every host cost on the critical path), at 1/32/64
           streams of 128-token prompts; wall time and the process's CPU time
  inputs   building a CUDA graph step's input tensor (ids, positions, slots, lens, tables) as
           `DecodeGraphs.run` does, on the critical path too (it precedes each replay)
  device   a runner whose decode steps keep a simulated device busy for --device-ms after launch,
           three engine loops in the same run, ms per step and the host time left exposed
           (ms per step - device ms):
             wait     the engine waits for each step (a runner without `launch`)
             overlap  the previous step's output processing runs while the device works, the
                      next step is scheduled after this one's tokens are in (`plan_ahead` off)
             ahead    also the next step is planned while the device works and launched right
                      after `postprocess` (`Scheduler.schedule_ahead`, the default)
  --profile N: the top functions (cProfile) of the host-only run at N streams.
  --count-runs K --streams N --checkpoint DIR: only K host-only runs (no torch import), for an
           instruction count that a loaded machine cannot blur: run it under
           `valgrind --tool=cachegrind --cache-sim=no` with K=1 and K=0 and subtract.

    .venv/bin/python bench/gpu/host_overhead.py [--repeats 3] [--profile 64]
"""

from __future__ import annotations

import cProfile
import math
import pstats
import tempfile
import time
from pathlib import Path

from isthmus.engine.core.llm import LLM
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput, SampledToken, SchedulePlan
from isthmus.engine.core.step_handle import StepHandle

_CHECKPOINT: list[Path] = []


class InstantRunner:
    """Samples token 5 for every sequence that asks, without touching a model."""

    def __init__(self, num_kv_blocks: int, block_size: int, max_model_len: int) -> None:
        self.num_kv_blocks, self.block_size, self.max_model_len = num_kv_blocks, block_size, max_model_len
        self.vocab_size = 102400
        self.steps = 0

    def run(self, plan: SchedulePlan) -> RunOutput:
        self.steps += 1
        out = RunOutput()
        for s in plan.seqs:
            if s.do_sample:
                out.sampled[s.seq_id] = SampledToken(5, -0.1, 0.5)
        return out


class SimulatedDevice(InstantRunner):
    """A device that computes instantly but keeps the books of a real one: the host thread's CPU
    time between a step's result and the next launch is on the critical path (the device idles:
    ``exposed``), its CPU time between a launch and the wait for that step's result overlaps the
    device (``hidden``). With a device step of D ms, a step takes D + exposed while hidden < D.

    Thread CPU time, not wall time: a loaded machine descheduling the process inflates neither.
    """

    def __init__(self, *args: int, overlap: bool) -> None:
        super().__init__(*args)
        self.exposed = self.hidden = 0.0
        self._done: float | None = None  # thread CPU time when the last result was returned
        if overlap:  # without `launch` the engine calls `run` and waits (the synchronous loop)
            self.launch = self._launch

    def _launch(self, plan: SchedulePlan) -> StepHandle:
        if any(t < 0 for s in plan.seqs for t in s.token_ids):
            raise ValueError("a row was launched before its token was filled in")
        launched = time.thread_time()
        if self._done is not None:
            self.exposed += launched - self._done
        out = InstantRunner.run(self, plan)
        decode = all(len(s.token_ids) == 1 for s in plan.seqs)

        def finish() -> RunOutput:
            self.hidden += time.thread_time() - launched
            self._done = time.thread_time()
            return out

        return StepHandle(finish, overlapped=decode)

    def run(self, plan: SchedulePlan) -> RunOutput:
        return self._launch(plan).result()


def _checkpoint(path: str | None = None) -> Path:
    if path is not None:
        _CHECKPOINT[:] = [Path(path)]
    if not _CHECKPOINT:  # the LLM wants a tokenizer folder
        from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

        _CHECKPOINT.append(Path(make_tiny_checkpoint(tempfile.mkdtemp(), "llama", seed=0)))
    return _CHECKPOINT[0]


def _shape(streams: int, prompt: int, new: int) -> tuple[int, int, int]:
    return streams * math.ceil((prompt + new) / 16) + 16, 16, prompt + new + 16


def engine_run(
    streams: int, runner: InstantRunner | None = None, *, plan_ahead: bool = True, prompt: int = 128,
    new: int = 128,
) -> tuple[float, float]:
    """(wall ms, process CPU ms) per step of `streams` requests of `prompt` + `new` tokens."""
    blocks, block_size, max_len = _shape(streams, prompt, new)
    runner = runner or InstantRunner(blocks, block_size, max_len)
    llm = LLM(str(_checkpoint()), runner=runner, max_num_seqs=streams, block_size=block_size,
              max_num_batched_tokens=streams * prompt, num_kv_blocks=blocks, max_model_len=max_len)
    llm.core.plan_ahead = plan_ahead
    reqs = [[7 + i] * prompt for i in range(streams)]
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    t0, c0 = time.perf_counter(), time.process_time()
    outs = llm.generate(reqs, [params] * streams)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(len(o.token_ids) == new for o in outs)
    return wall / runner.steps * 1e3, cpu / runner.steps * 1e3


def engine_overhead(streams: int, runner: InstantRunner | None = None) -> float:
    """Wall ms per step (the figure earlier versions of this script printed)."""
    return engine_run(streams, runner)[0]


def input_build(rows: int = 32, width: int = 16, reps: int = 200) -> float:
    import torch

    ids, pos = list(range(rows)), [200] * rows
    slots = list(range(rows))
    tables = [list(range(i * width, (i + 1) * width)) for i in range(rows)]
    t0 = time.perf_counter()
    for _ in range(reps):
        flat = [*ids, *pos, *slots, *[p + 1 for p in pos]]
        for t in tables:
            flat += t
        torch.tensor(flat, dtype=torch.long)
    return (time.perf_counter() - t0) / reps * 1e3


def device_loops(streams: int) -> dict[str, tuple[float, float]]:
    """(exposed, hidden) host CPU ms per step of the three engine loops (see the module)."""
    shape = _shape(streams, 128, 128)
    cases = {"wait": (False, False), "overlap": (True, False), "ahead": (True, True)}
    result = {}
    for name, (overlap, ahead) in cases.items():
        runner = SimulatedDevice(*shape, overlap=overlap)
        engine_run(streams, runner, plan_ahead=ahead)
        result[name] = (runner.exposed / runner.steps * 1e3, runner.hidden / runner.steps * 1e3)
    return result


def profile(streams: int, top: int = 15) -> None:
    engine_run(streams)  # warm
    prof = cProfile.Profile()
    prof.enable()
    engine_run(streams)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (the fastest is printed)")
    ap.add_argument("--profile", type=int, default=0, help="also profile the host-only run at N streams")
    ap.add_argument("--count-runs", type=int, default=None, help="only this many host-only runs")
    ap.add_argument("--streams", type=int, default=64, help="streams of the --count-runs runs")
    ap.add_argument("--checkpoint", default=None, help="a tiny checkpoint folder (else one is written)")
    args = ap.parse_args()
    _checkpoint(args.checkpoint)
    if args.count_runs is not None:
        for _ in range(args.count_runs):
            engine_run(args.streams)
        return
    engine_run(8)  # warm-up: imports, the tiny checkpoint
    print("host work per step, instant runner (128-token prompts, 128 new tokens):")
    for n in (1, 32, 64):
        runs = [engine_run(n) for _ in range(args.repeats)]
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"  {n:2d} streams: {wall:.3f} ms/step wall, {cpu:.3f} ms/step CPU")
    for rows, width in ((32, 16), (64, 16), (64, 128)):  # 128 blocks of 16: a 2,048-token context
        cost = min(input_build(rows, width) for _ in range(args.repeats))
        print(f"graph input build, {rows} rows x {width} blocks: {cost:.3f} ms")
    print("simulated device: host CPU ms per step on the critical path (exposed) / overlapped (hidden)")
    for n in (1, 32, 64):
        runs = [device_loops(n) for _ in range(args.repeats)]
        best = {k: min(runs, key=lambda r, k=k: r[k][0])[k] for k in runs[0]}
        cells = ", ".join(f"{k} {e:.3f} / {h:.3f}" for k, (e, h) in best.items())
        print(f"  {n:2d} streams: {cells}")
    if args.profile:
        profile(args.profile)


if __name__ == "__main__":
    main()
