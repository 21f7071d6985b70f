"""Decode graphs under the tensor-parallel rewrite, proved at TP=1.

On CPU the graphs run their padded static-buffer forward eagerly (as in test_cuda_graph.py):
a runner built through `TensorParallelRewrite` decodes the same greedy tokens through the graph
path as a plain runner, and a follower fed the same plans through `forward_step` takes the same
path (replay for decode-only steps, eager otherwise) and ends with the same KV cache. On CUDA
(skipped without one) the rewrite runner really captures, all-reduces inside the graphs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from isthmus.center.distributed import single_process_group
from isthmus.center.tp import TensorParallelRewrite
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.runner.cuda_graph import DecodeGraphs
from isthmus.engine.runner.model_runner import ModelRunner

from .._runner_helpers import greedy_generate, seq, shuffled_blocks

NUM_BLOCKS = 64
SCRATCH = NUM_BLOCKS - 1
PROMPT = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450]


def _options(path: Path, device: str = "cpu", graphs: bool = True) -> EngineOptions:
    return EngineOptions(model=str(path), device=device, block_size=4, num_kv_blocks=NUM_BLOCKS,
                         max_num_seqs=8, max_model_len=128, use_cuda_graphs=graphs)


def _tp1(path: Path, device: str = "cpu", graphs: bool = True) -> ModelRunner:
    rewrite = TensorParallelRewrite(single_process_group(device))
    return ModelRunner(_options(path, device, graphs), rewrites=[rewrite])


def _with_cpu_graphs(runner: ModelRunner) -> ModelRunner:
    runner.graphs = DecodeGraphs(
        runner.model, runner.kv_caches, max_batch=8, max_model_len=128, block_size=4, scratch_block=SCRATCH
    )
    return runner


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_tp_rewrite_graph_path_matches_plain_runner_on_cpu(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(fixture)
    blocks = shuffled_blocks(SCRATCH, 12, seed=5)
    tp = _with_cpu_graphs(_tp1(path))
    plain = ModelRunner(_options(path))
    assert greedy_generate(tp, PROMPT, 10, chunk=5, blocks=blocks) == greedy_generate(
        plain, PROMPT, 10, chunk=5, blocks=blocks
    )


def test_follower_replays_when_the_driver_does(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver, follower = _with_cpu_graphs(_tp1(tiny_llama)), _with_cpu_graphs(_tp1(tiny_llama))
    paths: dict[str, list[str]] = {"driver": [], "follower": []}
    for name, runner in (("driver", driver), ("follower", follower)):
        for attr, label in (("_replay", "replay"), ("forward", "eager")):
            real = getattr(runner, attr)

            def traced(plan: SchedulePlan, real=real, n=name, label=label):  # type: ignore[no-untyped-def]
                paths[n].append(label)
                return real(plan)

            monkeypatch.setattr(runner, attr, traced)
    blocks = shuffled_blocks(SCRATCH, 12, seed=7)
    history = list(PROMPT)
    plans = [SchedulePlan([seq(1, history, 0, 8, len(PROMPT), blocks)]),
             SchedulePlan([seq(1, history, 8, 16, len(PROMPT), blocks)])]
    for plan in plans:
        out = driver.run(plan)
        follower.forward_step(plan)
    for _ in range(4):  # decode steps: the driver samples, the follower only runs the forward
        history.append(out.sampled[1].token_id)
        plan = SchedulePlan([seq(1, history, len(history) - 1, len(history), len(PROMPT), blocks)])
        out = driver.run(plan)
        follower.forward_step(plan)
    follower.forward_step(SchedulePlan())  # an empty plan runs nothing
    assert paths["driver"] == paths["follower"] == ["eager", "eager"] + ["replay"] * 4
    for (dk, dv), (fk, fv) in zip(driver.kv_caches, follower.kv_caches, strict=True):
        assert torch.equal(dk, fk) and torch.equal(dv, fv)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tp_rewrite_captures_graphs_on_cuda(tiny_llama: Path) -> None:
    tp = _tp1(tiny_llama, "cuda")
    assert tp.graphs is not None and tp.graphs.captured, "capture under the TP rewrite failed"
    eager = _tp1(tiny_llama, "cuda", graphs=False)
    blocks = list(range(16))
    assert greedy_generate(tp, PROMPT, 8, chunk=5, blocks=blocks)[:6] == greedy_generate(
        eager, PROMPT, 8, chunk=5, blocks=blocks
    )[:6]
