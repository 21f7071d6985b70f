"""CUDA-graph decode steps and the Triton paged-decode kernel.

On CPU: `DecodeGraphs` runs its padded static-buffer forward eagerly, which checks the padding,
scratch-block and block-table logic and the runner's graph path against the eager runner in
float32. On CUDA (skipped without one): the kernel against the gather-and-mask decode, and graph
replay against the eager forward.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from isthmus.engine.core.llm import LLM
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import SchedulePlan
from isthmus.engine.model.attention import _decode_batch
from isthmus.engine.runner.cuda_graph import DecodeGraphs
from isthmus.engine.runner.model_runner import ModelRunner

from .._runner_helpers import greedy_generate, logits_of, seq, shuffled_blocks


def needs_cuda(fn):  # type: ignore[no-untyped-def]
    """Mark a test GPU-only (skipped without CUDA)."""
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(fn)
    return pytest.mark.gpu(fn)

NUM_BLOCKS = 64
SCRATCH = NUM_BLOCKS - 1  # on CPU the test reserves the last block itself


def _cpu_runner(path: Path) -> ModelRunner:
    return ModelRunner(
        EngineOptions(model=str(path), block_size=4, num_kv_blocks=NUM_BLOCKS, max_model_len=128)
    )


def _cpu_graphs(runner: ModelRunner, max_batch: int = 8) -> DecodeGraphs:
    return DecodeGraphs(
        runner.model, runner.kv_caches, max_batch=max_batch, max_model_len=128, block_size=4,
        scratch_block=SCRATCH,
    )


def test_static_buffer_decode_matches_eager_on_cpu(tiny_llama: Path) -> None:
    runner = _cpu_runner(tiny_llama)
    graphs = _cpu_graphs(runner)
    assert not graphs.captured and graphs.sizes == [1, 2, 4, 8]
    prompts = [[3, 17, 345, 12, 900, 77, 5], [0, 613, 240], [31, 8, 1000, 64, 129, 3, 450, 2, 9, 10, 11]]
    scrambled = shuffled_blocks(SCRATCH, 12)
    tables = [scrambled[4 * i : 4 * i + 4] for i in range(3)]
    for i, p in enumerate(prompts):
        logits_of(runner, seq(i, p, 0, len(p), len(p), tables[i]))
    histories = [[*p, t] for p, t in zip(prompts, [7, 8, 9], strict=True)]
    pos = [len(h) - 1 for h in histories]
    args = (
        [h[-1] for h in histories],
        pos,
        [tables[i][pos[i] // 4] * 4 + pos[i] % 4 for i in range(3)],
        [tables[i][: pos[i] // 4 + 1] for i in range(3)],
    )
    with torch.inference_mode():
        ours = graphs.run(*args).clone()  # 3 rows padded to 4
    assert ours.shape == (3, runner.vocab_size)
    # Only the live slots and the scratch block were written: every other block is still zero.
    owned = {b for t in tables for b in t} | {SCRATCH}
    k0 = runner.kv_caches[0][0]
    assert k0[[b for b in range(NUM_BLOCKS) if b not in owned]].abs().sum() == 0
    assert k0[SCRATCH].abs().sum() > 0
    for i, h in enumerate(histories):
        eager = logits_of(runner, seq(i, h, len(h) - 1, len(h), len(prompts[i]), tables[i]))[0]
        torch.testing.assert_close(ours[i], eager, rtol=1e-4, atol=1e-4)
    # A smaller batch after a larger one: stale rows of the static buffers must not leak in.
    with torch.inference_mode():
        one = graphs.run([args[0][1]], [pos[1]], [args[2][1]], [args[3][1]])
    eager1 = logits_of(runner, seq(1, histories[1], pos[1], pos[1] + 1, 3, tables[1]))[0]
    torch.testing.assert_close(one[0], eager1, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="graphs are captured for"):
        graphs.run([1] * 9, [0] * 9, [0] * 9, [[0]] * 9)


def test_runner_graph_path_matches_eager_runner_on_cpu(tiny_llama: Path) -> None:
    prompt = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450]
    blocks = shuffled_blocks(SCRATCH, 12, seed=3)
    with_graphs = _cpu_runner(tiny_llama)
    with_graphs.graphs = _cpu_graphs(with_graphs)  # the runner's decode-step path, run eagerly
    plain = _cpu_runner(tiny_llama)
    assert plain.graphs is None  # never on CPU
    assert greedy_generate(with_graphs, prompt, 12, chunk=5, blocks=blocks) == greedy_generate(
        plain, prompt, 12, chunk=5, blocks=blocks
    )


@needs_cuda
@pytest.mark.parametrize(("heads", "kv_heads", "block_size"), [(8, 2, 4), (4, 4, 16), (32, 32, 16)])
def test_paged_decode_matches_gather_reference(heads: int, kv_heads: int, block_size: int) -> None:
    from isthmus.engine.kernels.decode_attention import paged_decode

    torch.manual_seed(heads + block_size)
    num_blocks, head_dim, n = 64, 64, 5
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda")
    v_cache = torch.randn_like(k_cache)
    lens = torch.tensor([1, 7, 63, 130, 200][:n], device="cuda")
    max_blocks = -(-int(lens.max()) // block_size)
    perm = torch.randperm(num_blocks, device="cuda")
    tables = torch.stack([perm.roll(i)[:max_blocks] for i in range(n)])  # [n, max_blocks]
    q = torch.randn(n, heads, head_dim, device="cuda")
    ref = _decode_batch(q, k_cache, v_cache, tables, lens, 0.125)
    ours = paged_decode(q, k_cache, v_cache, tables, lens, 0.125)
    rel = ((ours - ref).norm() / ref.norm()).item()
    assert rel < 1e-3, rel
    # bf16 cache and queries, as the engine runs on GPU.
    ours16 = paged_decode(q.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16(), tables, lens, 0.125)
    assert ((ours16.float() - ref).norm() / ref.norm()).item() < 2e-2


def _runner(path: Path, graphs: bool, quant: str | None = None) -> ModelRunner:
    return ModelRunner(
        EngineOptions(
            model=str(path),
            device="cuda",
            quantization=quant,
            block_size=4,
            num_kv_blocks=64,
            max_num_seqs=8,
            max_model_len=128,
            use_cuda_graphs=graphs,
        )
    )


@needs_cuda
@pytest.mark.parametrize("quant", [None, "nf4", "int8"])
def test_graph_decode_matches_eager(tiny_llama: Path, quant: str | None) -> None:
    runner = _runner(tiny_llama, graphs=True, quant=quant)
    assert runner.graphs is not None, "capture failed (see the warning)"
    assert runner.graphs.captured and runner.graphs.sizes == [1, 2, 4, 8]
    prompts = [[3, 17, 345, 12, 900, 77, 5], [0, 613, 240], [31, 8, 1000, 64, 129, 3, 450, 2, 9, 10, 11]]
    scrambled = shuffled_blocks(64, 12)
    tables = [scrambled[4 * i : 4 * i + 4] for i in range(3)]  # distinct blocks per sequence
    # Prefill each prompt eagerly (writes its KV), then one decode token each.
    for i, p in enumerate(prompts):
        logits_of(runner, seq(i, p, 0, len(p), len(p), tables[i]))
    nxt = [7, 8, 9]
    histories = [[*p, t] for p, t in zip(prompts, nxt, strict=True)]
    ids = [h[-1] for h in histories]
    pos = [len(h) - 1 for h in histories]
    slots = [tables[i][pos[i] // 4] * 4 + pos[i] % 4 for i in range(3)]
    blocks = [tables[i][: pos[i] // 4 + 1] for i in range(3)]
    with torch.inference_mode():
        graph_logits = runner.graphs.run(ids, pos, slots, blocks).float().clone()  # padded 3 -> 4
    assert runner.graphs.padded_size(3) == 4
    for i, h in enumerate(histories):
        eager = logits_of(runner, seq(i, h, len(h) - 1, len(h), len(prompts[i]), tables[i]))[0]
        rel = ((graph_logits[i] - eager).norm() / eager.norm()).item()
        # bf16; bitsandbytes picks its nf4 kernel by batch size (4 here vs 1 eager); int8 also
        # rounds activations to fp16 and int8 per row.
        assert rel < (2e-2 if quant is None else 5e-2), (i, rel)
    assert torch.isfinite(graph_logits).all()


@needs_cuda
def test_graph_generation_matches_eager_runner(tiny_llama: Path) -> None:
    prompt = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64, 129, 3, 450]
    blocks = list(range(16))
    with_graphs = _runner(tiny_llama, graphs=True)
    without = _runner(tiny_llama, graphs=False)
    assert without.graphs is None
    a = greedy_generate(with_graphs, prompt, 12, chunk=5, blocks=blocks)
    b = greedy_generate(without, prompt, 12, chunk=5, blocks=blocks)
    # bf16 near-ties could flip a late token; the first several must agree exactly.
    assert a[:6] == b[:6]
    assert len(a) == 12


@needs_cuda
def test_failed_capture_falls_back_to_eager(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward that syncs with the host (illegal while capturing) makes capture fail: the runner
    warns, keeps no graphs, leaves the default stream current and decodes eagerly."""
    real_forward = DecodeGraphs._forward

    def syncing_forward(self: DecodeGraphs, bs: int) -> torch.Tensor:
        logits = real_forward(self, bs)
        logits.sum().item()
        return logits

    monkeypatch.setattr(DecodeGraphs, "_forward", syncing_forward)
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        runner = _runner(tiny_llama, graphs=True)
    assert runner.graphs is None
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    prompt = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8]
    blocks = list(range(16))
    eager = _runner(tiny_llama, graphs=False)
    assert greedy_generate(runner, prompt, 6, chunk=5, blocks=blocks) == greedy_generate(
        eager, prompt, 6, chunk=5, blocks=blocks
    )


def test_graph_path_skips_prefill_and_prompt_logprobs(tiny_llama: Path) -> None:
    runner = _cpu_runner(tiny_llama)
    runner.graphs = _cpu_graphs(runner)
    p = [1, 2, 3, 4, 5]
    prefill = SchedulePlan([seq(1, p, 0, 5, 5, list(range(4)))])
    assert not runner._graph_eligible(prefill)
    one_token_prompt = SchedulePlan([seq(2, [9], 0, 1, 1, [4], want_prompt_logprobs=True)])
    assert not runner._graph_eligible(one_token_prompt)
    decode = SchedulePlan([seq(1, [*p, 6], 5, 6, 5, list(range(4)))])
    assert runner._graph_eligible(decode)


def test_replay_check_rejects_graphs_that_do_not_reproduce_eager() -> None:
    """`_check_replay` on stand-in graphs: one that recomputes the eager logits passes; one that
    writes nothing (its output is NaN-filled first) or writes other values is refused."""
    from isthmus.engine.runner.cuda_graph import _check_replay

    eager = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))

    class Graph:
        def __init__(self, write: torch.Tensor | None) -> None:
            self.write = write
            self.out = torch.empty_like(eager)

        def replay(self) -> None:
            if self.write is not None:
                self.out.copy_(self.write)

    good = Graph(eager + 1e-4)
    _check_replay(4, good, good.out, eager)  # type: ignore[arg-type]
    for bad in (Graph(None), Graph(eager.roll(1, 0)), Graph(eager * float("inf"))):
        with pytest.raises(RuntimeError, match="disagrees with eager"):
            _check_replay(4, bad, bad.out, eager)  # type: ignore[arg-type]


def test_supports_shape() -> None:
    from isthmus.engine.kernels.decode_attention import supports_shape

    assert supports_shape(32, 32, 128) and supports_shape(28, 4, 128) and supports_shape(4, 2, 16)
    assert not supports_shape(4, 2, 80)  # tl.arange extents must be powers of two
    assert not supports_shape(6, 4, 64)  # GQA groups must divide evenly
    assert not supports_shape(4, 0, 64)


def test_runner_graphs_only_for_heads_the_kernel_handles(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Graphs are built only when the Triton decode takes the model's heads (else the captured
    decode would gather the whole max_model_len-wide table). `available` is forced on, so the
    runner builds its graphs on CPU, where nothing is captured or run at construction."""
    from isthmus.engine.kernels import decode_attention
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    monkeypatch.setattr(decode_attention, "available", lambda device: True)
    assert _cpu_runner(tiny_llama).graphs is not None  # head_dim 16
    odd = make_tiny_checkpoint(tmp_path / "hd12", "llama", seed=6, hidden_size=48)  # head_dim 12
    assert _cpu_runner(odd).graphs is None


_INTERPRET_CHECK = """
import torch
from isthmus.engine.model.attention import _decode_batch
from isthmus.engine.kernels.decode_attention import paged_decode
# (heads, kv_heads, block_size, head_dim, dtype): GQA 8/2, MHA, a group of 3, the 7B's MHA 32x128,
# GQA 32/8 at head_dim 128, block 32, the tiny models' head_dim 16, and bf16 cache and queries.
CASES = [
    (8, 2, 4, 64, torch.float32), (4, 4, 16, 64, torch.float32), (6, 2, 16, 64, torch.float32),
    (32, 32, 16, 128, torch.float32), (32, 8, 32, 128, torch.float32), (4, 2, 32, 16, torch.float32),
    (8, 2, 16, 128, torch.bfloat16),
]
for heads, kvh, bs, hd, dtype in CASES:
    g = torch.Generator().manual_seed(heads + bs + hd)
    k = torch.randn(64, bs, kvh, hd, generator=g).to(dtype)
    v = torch.randn(64, bs, kvh, hd, generator=g).to(dtype)
    # Length 1, exact multiples of the block size and of the kernel's 64-key step, one past them.
    lens = torch.tensor([1, bs, 2 * bs, 3 * bs + 1, 63, 64, 65, 200])
    width = -(-200 // bs) + 2  # wider than any row needs, as the graphs' static table is
    tables = torch.stack([torch.randperm(64, generator=g)[:width] for _ in lens])
    need = (lens + bs - 1) // bs
    junk = tables.clone()  # entries past each row's context: an id far outside the cache
    for row, n in enumerate(need.tolist()):
        junk[row, n:] = 10**9
    q = torch.randn(len(lens), heads, hd, generator=g).to(dtype)
    scale = hd**-0.5
    ref = _decode_batch(q.float(), k.float(), v.float(), tables, lens, scale)
    out = paged_decode(q, k, v, junk, lens, scale)
    assert out.dtype == dtype and out.shape == q.shape
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    # fp32: online vs. one-pass softmax; bf16: the output's rounding (inputs are the same values).
    assert rel < (1e-5 if dtype == torch.float32 else 1e-2), (heads, kvh, bs, hd, dtype, rel)
    row_err = ((out.float() - ref).norm(dim=(1, 2)) / ref.norm(dim=(1, 2))).max().item()
    assert row_err < (1e-5 if dtype == torch.float32 else 1e-2), (heads, kvh, bs, hd, dtype, row_err)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_paged_decode_kernel_in_triton_interpreter() -> None:
    """The kernel's indexing and online softmax, run by Triton's CPU interpreter (no GPU needed)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _INTERPRET_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


_RUNNER_WITH_KERNEL = """
import sys
from isthmus.engine.kernels import decode_attention
from isthmus.engine.runner.cuda_graph import DecodeGraphs
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.runner.model_runner import ModelRunner
from tests.engine._runner_helpers import greedy_generate, shuffled_blocks

prompt = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000, 64]
blocks = shuffled_blocks(63, 12, seed=5)


def runner(graphs):
    r = ModelRunner(EngineOptions(model=sys.argv[1], block_size=4, num_kv_blocks=64, max_model_len=128))
    if graphs:  # block 63 is the scratch block; on CPU the static-buffer forward runs eagerly
        r.graphs = DecodeGraphs(
            r.model, r.kv_caches, max_batch=4, max_model_len=128, block_size=4, scratch_block=63
        )
    return r


portable = greedy_generate(runner(False), prompt, 10, chunk=5, blocks=blocks)
decode_attention.supports = lambda q, k_cache: True  # attention.py's dispatch takes the kernel
assert greedy_generate(runner(False), prompt, 10, chunk=5, blocks=blocks) == portable
assert greedy_generate(runner(True), prompt, 10, chunk=5, blocks=blocks) == portable
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_runner_with_kernel_in_triton_interpreter(tiny_llama: Path) -> None:
    """attention.py's dispatch to the kernel inside the real model (GQA 4/2, head_dim 16, block 4),
    chunked prefill then decodes, eagerly and through the graphs' static buffers: the same greedy
    tokens as the portable decode. The kernel runs in Triton's interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER_WITH_KERNEL, str(tiny_llama)],
        env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[3],
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


# ---- incremental block tables (`DecodeGraphs.stage`) ------------------------------------------


def _stage_tables(graphs: DecodeGraphs, tables: list[list[int]], planted: int | None = None) -> int:
    """Stage a decode step whose rows have `tables`; check every live row's buffer (but the row
    `planted` with a sentinel), return bs."""
    n = len(tables)
    bs = graphs.stage([1] * n, [4 * len(t) - 1 for t in tables], [4 * t[-1] for t in tables], tables)
    buf = graphs.block_tables
    for r, t in enumerate(tables):
        assert r == planted or buf[r, : len(t)].tolist() == t, f"row {r} is stale"
    for r in range(n, bs):  # padded rows attend the scratch block alone
        assert buf[r, 0] == SCRATCH and graphs.context_lens[r] == 1
    assert graphs.context_lens[:n].tolist() == [4 * len(t) for t in tables]
    return bs


def test_block_tables_are_written_incrementally(tiny_llama: Path) -> None:
    """Rows whose table did not change are not written: a sentinel planted in such a row survives.
    Rows that did change, including the ways a row can change under the same sequence id and
    length (preemption, a prefix-cache hit), are rewritten."""
    graphs = _cpu_graphs(_cpu_runner(tiny_llama))
    a, b, c = [5, 9, 2], [7, 1], [11, 12, 13, 14]
    assert _stage_tables(graphs, [a, b, c]) == 4
    graphs.block_tables[0, 2] = 40  # behind its back: row 0 is unchanged, so it must stay 40
    _stage_tables(graphs, [a, [*b, 30], c], planted=0)  # a new block appended mid-run
    assert graphs.block_tables[0, 2] == 40
    graphs.block_tables[0, 2] = 2
    _stage_tables(graphs, [a, [*b, 30], c])  # nothing changed
    # The sequence in row 0 finished: the others move up a row, a padded row appears.
    _stage_tables(graphs, [[*b, 30], c])
    _stage_tables(graphs, [[*b, 30], c, [20]])
    # Another sequence takes row 1 with a table of the same length.
    _stage_tables(graphs, [[*b, 30], [21, 22, 23, 24], [20]])
    # Preempted and resumed under the same id and length, on other blocks (or a prefix-cache hit
    # that swapped its leading blocks for cached ones): same length, new contents.
    _stage_tables(graphs, [[*b, 30], [21, 25, 23, 24], [20]])
    _stage_tables(graphs, [[*b, 30], [8, 25, 23, 24, 26], [20]])  # grown and rewritten at once
    _stage_tables(graphs, [[3], [4], [6]])  # shorter tables: stale columns past them are unread
    # A batch of all-new rows is written densely (one cell per entry is cheaper than two).
    graphs.block_tables[5, 0] = 41
    _stage_tables(graphs, [[30 + i, 31 + i] for i in range(8)])
    with pytest.raises(ValueError, match="tables hold"):
        graphs.stage([1], [0], [0], [list(range(33))])  # wider than max_model_len / block_size
    with pytest.raises(ValueError, match="one entry per row"):
        graphs.stage([1, 2], [0, 0], [0, 0], [[1]])
    _stage_tables(graphs, [[30, 31]])  # a refused step leaves the known rows right


def test_forget_tables_rewrites_every_row(tiny_llama: Path) -> None:
    graphs = _cpu_graphs(_cpu_runner(tiny_llama))
    _stage_tables(graphs, [[5, 9], [7]])
    graphs.block_tables.fill_(0)
    graphs.forget_tables()
    _stage_tables(graphs, [[5, 9], [7]])


def _engine_requests() -> tuple[list[list[int]], list[SamplingParams]]:
    shared = [0, 17, 345, 12, 900, 77, 5, 613, 240, 31, 8, 1000]  # three full blocks: prefix-cached
    prompts = [[*shared, 3, 4], [*shared, 9], [31, 8, 1000, 64, 129], [*shared, 3, 4, 5, 6, 7],
               [2, 3], [*shared, 60, 61, 62]]
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (21, 6, 17, 13, 9, 19)]
    return prompts, params


def _engine(path: Path, graphs: bool) -> tuple[LLM, list[int]]:
    num_blocks = 14  # small: running sequences preempt one another
    runner = ModelRunner(
        EngineOptions(model=str(path), block_size=4, num_kv_blocks=num_blocks + 1, max_model_len=128)
    )
    runner.num_kv_blocks = num_blocks  # the last block is the graphs' scratch, as on a GPU
    staged: list[int] = []
    if graphs:
        runner.graphs = DecodeGraphs(runner.model, runner.kv_caches, max_batch=4, max_model_len=128,
                                     block_size=4, scratch_block=num_blocks)
        real_stage = runner.graphs.stage

        def checked_stage(ids: list[int], pos: list[int], slots: list[int], tables: list[list[int]]) -> int:
            bs = real_stage(ids, pos, slots, tables)
            for r, t in enumerate(tables):  # a stale row fails here, even if its tokens survive
                assert runner.graphs.block_tables[r, : len(t)].tolist() == t  # type: ignore[union-attr]
            staged.append(len(ids))
            return bs

        runner.graphs.stage = checked_stage  # type: ignore[method-assign]
    llm = LLM(str(path), runner=runner, block_size=4, num_kv_blocks=num_blocks, max_num_seqs=4,
              max_num_batched_tokens=32)
    return llm, staged


def test_engine_with_incremental_tables_matches_eager(tiny_llama: Path) -> None:
    """Continuous batching through the graph path: sequences finish and others take their rows,
    prompts share prefix-cached blocks, sequences are preempted and resumed, blocks are appended
    mid-run. Every staged row matches its table and the greedy tokens equal the eager engine's."""
    prompts, params = _engine_requests()
    plain, _ = _engine(tiny_llama, graphs=False)
    expected = [o.token_ids for o in plain.generate(prompts, params)]
    llm, staged = _engine(tiny_llama, graphs=True)
    got = [o.token_ids for o in llm.generate(prompts, params)]
    assert got == expected
    sched = llm.core.scheduler
    assert sched.num_preemptions > 0 and sched.block_manager.stats.num_hit_tokens > 0
    assert len(staged) > 20 and len(set(staged)) > 1  # many graph steps, at several batch sizes
