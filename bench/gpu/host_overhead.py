"""Host (Python) cost per engine step around the model, on CPU: the part a CUDA graph cannot hide.

A decode step on the GPU is synchronous (prepare inputs, replay, sample, back to the scheduler),
so host work adds to the step time directly. This times, with a runner that returns at once:
  engine   scheduler + output processing per step (32 and 1 streams, 128-token prompts)
  inputs   building the graph's input tensor (ids, positions, slots, lens, tables) for 32 rows
  overlap  a runner whose decode steps take --device-ms on a simulated device: ms per step when
           the engine waits for each step (run) and when it processes the previous step's
           outputs while the device works (launch, as the CUDA graph path does)

    .venv/bin/python bench/gpu/host_overhead.py
"""

from __future__ import annotations

import math
import time

import torch
from isthmus.engine.core.llm import LLM
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput, SampledToken, SchedulePlan
from isthmus.engine.core.step_handle import StepHandle


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
    """Each decode step keeps a 'device' busy for ``device_s`` after launch; prefill is instant."""

    def __init__(self, *args: int, device_s: float, overlap: bool) -> None:
        super().__init__(*args)
        self.device_s, self.overlap = device_s, overlap

    def run(self, plan: SchedulePlan) -> RunOutput:
        return self.launch(plan).result()

    def launch(self, plan: SchedulePlan) -> StepHandle:
        decode = all(len(s.token_ids) == 1 for s in plan.seqs)
        done_at = time.perf_counter() + (self.device_s if decode else 0.0)
        out = InstantRunner.run(self, plan)

        def finish() -> RunOutput:
            while time.perf_counter() < done_at:
                time.sleep(max(0.0, done_at - time.perf_counter()) / 2)
            return out

        return StepHandle(finish, overlapped=decode and self.overlap)


def engine_overhead(
    streams: int, prompt: int = 128, new: int = 128, runner: InstantRunner | None = None
) -> float:
    import tempfile

    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint  # the LLM wants a tokenizer folder

    path = make_tiny_checkpoint(tempfile.mkdtemp(), "llama", seed=0)
    blocks = streams * math.ceil((prompt + new) / 16) + 16
    runner = runner or InstantRunner(blocks, 16, prompt + new + 16)
    llm = LLM(str(path), runner=runner, max_num_seqs=streams, max_num_batched_tokens=streams * prompt,
              block_size=16, num_kv_blocks=blocks, max_model_len=prompt + new + 16)
    reqs = [[7 + i] * prompt for i in range(streams)]
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    llm.generate(reqs, [params] * streams)
    dt = time.perf_counter() - t0
    return dt / runner.steps * 1e3  # ms per step


def input_build(rows: int = 32, width: int = 16, reps: int = 200) -> float:
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


def overlap(streams: int, device_ms: float, prompt: int = 128, new: int = 128) -> tuple[float, float]:
    blocks = streams * math.ceil((prompt + new) / 16) + 16
    shape = (blocks, 16, prompt + new + 16)
    runs = [SimulatedDevice(*shape, device_s=device_ms / 1e3, overlap=o) for o in (False, True)]
    waited, overlapped = (engine_overhead(streams, runner=r) for r in runs)
    return waited, overlapped


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--device-ms", type=float, default=7.0, help="simulated device time per decode step")
    args = ap.parse_args()
    for n in (1, 32):
        print(f"engine host work, {n:2d} streams: {engine_overhead(n):.3f} ms/step")
    print(f"graph input build, 32 rows x 16 blocks: {input_build():.3f} ms")
    for n in (32, 64):
        waited, overlapped = overlap(n, args.device_ms)
        print(f"{n} streams, {args.device_ms:g} ms device step: {waited:.3f} ms/step waiting, "
              f"{overlapped:.3f} ms/step overlapped")
