"""KV blocks out of one engine and into another (a KV migration), on a tiny CPU model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from isthmus.engine.core.core import EngineCore
from isthmus.engine.core.kv_blocks import KVMismatch, KVPayload
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.runner import kv_transfer
from isthmus.engine.runner.model_runner import ModelRunner
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

PROMPT = [0, 17, 300, 42, 9, 77, 5, 6, 7, 8, 123, 456, 99]


def _opts(model: Path, block_size: int = 4, num_kv_blocks: int = 64) -> EngineOptions:
    return EngineOptions(model=str(model), num_kv_blocks=num_kv_blocks, block_size=block_size)


def _run(core: EngineCore, rid: str) -> list[int]:
    ids: list[int] = []
    while core.has_unfinished:
        for out in core.step():
            if out.request_id == rid:
                ids += out.new_token_ids
    return ids


def _start(core: EngineCore, params: SamplingParams, num_tokens: int) -> list[int]:
    core.add("r", PROMPT, params)
    got: list[int] = []
    while len(got) < num_tokens:
        for out in core.step():
            got += out.new_token_ids
    return got


def test_export_then_import_restores_the_same_bytes(tiny_llama: Path) -> None:
    runner = ModelRunner(_opts(tiny_llama, block_size=4, num_kv_blocks=8))
    for k, v in runner.kv_caches:
        k.copy_(torch.randn_like(k))
        v.copy_(torch.randn_like(v))
    data = runner.export_kv([5, 2, 7], 10)
    spec = runner.kv_spec
    assert spec is not None and len(data) == 10 * spec.bytes_per_token
    assert spec.bytes_per_token == 2 * 2 * 2 * 16 * 4  # layers, K/V, kv heads, head dim, fp32
    other = ModelRunner(_opts(tiny_llama, block_size=8, num_kv_blocks=4))  # another block size
    kv_transfer.import_kv(other.kv_caches, [3, 0], KVPayload(spec, 10, data), 8)
    assert other.export_kv([3, 0], 10) == data
    k_src = runner.kv_caches[1][0].view(-1, 2, 16)
    k_dst = other.kv_caches[1][0].view(-1, 2, 16)
    assert torch.equal(k_src[5 * 4 + 1], k_dst[3 * 8 + 1])  # position 1 in both
    assert torch.equal(k_src[7 * 4 + 1], k_dst[0 * 8 + 1])  # position 9


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, repetition_penalty=1.2, seed=3,
                       ignore_eos=True),
    ],
    ids=["greedy", "seeded"],
)
@pytest.mark.parametrize("target_block_size", [4, 16])
def test_imported_kv_continues_token_identically(tiny_llama: Path, params: SamplingParams,
                                                 target_block_size: int) -> None:
    a = EngineCore(_opts(tiny_llama))
    got = _start(a, params, 7)
    state = a.export_state("r")
    n = len(state.prompt_ids) + len(state.output_ids) - 1
    payload = a.export_kv("r", n)
    assert payload is not None and payload.num_tokens == n
    assert a.abort("r") and a.scheduler.block_manager.num_free_blocks == 64
    b = EngineCore(_opts(tiny_llama, block_size=target_block_size))
    b.add("m", [], state.params, resume=state, kv=payload)
    plan = b.scheduler.schedule(0.0)  # admitted with its KV: only the last token is computed
    assert [len(s.token_ids) for s in plan.seqs] == [1] and plan.seqs[0].start_pos == n
    assert len(plan.kv_imports) == 1 and plan.kv_imports[0].payload is payload
    out = b.runner.run(plan)
    updates = b.scheduler.postprocess(plan, out)
    first = [t for u in updates for t in u.new_token_ids]
    resumed = got + first + _run(b, "m")
    ref = EngineCore(_opts(tiny_llama))
    ref.add("ref", PROMPT, state.params)
    assert resumed == _run(ref, "ref") and len(resumed) == 20
    assert b.scheduler.num_kv_imports == 1
    b.scheduler.block_manager.check_invariants()


def test_export_needs_the_positions_to_be_computed(tiny_llama: Path) -> None:
    a = EngineCore(_opts(tiny_llama))
    a.add("w", PROMPT, SamplingParams(max_tokens=4))
    assert a.export_kv("w", 3) is None  # waiting: nothing computed yet
    assert a.export_kv("nobody", 3) is None
    _run(a, "w")
    assert a.export_kv("w", 3) is None  # finished: its blocks are gone


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shapes as tiny_llama, other weights (seed 2)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("kv_other"), "llama", seed=2, write_manifest=True)


@pytest.mark.parametrize("what", ["other weights", "dtype", "num_layers", "short data", "wrong length"])
def test_a_payload_that_does_not_fit_is_dropped_and_the_cache_recomputed(
    tiny_llama: Path, other_model: Path, what: str
) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    a = EngineCore(_opts(other_model if what == "other weights" else tiny_llama))
    got = _start(a, params, 4)
    state = a.export_state("r")
    n = len(state.prompt_ids) + len(state.output_ids) - 1
    payload = a.export_kv("r", n)
    assert payload is not None
    spec = payload.spec
    if what == "dtype":
        payload = dataclasses.replace(payload, spec=dataclasses.replace(spec, dtype="bfloat16"))
    elif what == "num_layers":
        payload = dataclasses.replace(payload, spec=dataclasses.replace(spec, num_layers=3))
    elif what == "short data":
        payload = dataclasses.replace(payload, data=payload.data[:-4])
    elif what == "wrong length":
        payload = KVPayload(spec, n - 1, payload.data[: (n - 1) * spec.bytes_per_token])
    b = EngineCore(_opts(tiny_llama))
    b.add("m", [], state.params, resume=state, kv=payload)  # no error: recomputed from the ids
    rest = _run(b, "m")
    assert b.scheduler.num_kv_imports == 0 and len(got) + len(rest) == 12
    if what != "other weights":  # same model: the recomputed answer is the unmigrated one
        ref = EngineCore(_opts(tiny_llama))
        ref.add("ref", PROMPT, state.params)
        assert got + rest == _run(ref, "ref")
    bm = b.scheduler.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_total_blocks


def test_the_runner_refuses_a_bad_import_before_writing(tiny_llama: Path) -> None:
    runner = ModelRunner(_opts(tiny_llama, num_kv_blocks=8))
    spec = runner.kv_spec
    assert spec is not None
    before = [k.clone() for k, _ in runner.kv_caches]
    bad = KVPayload(dataclasses.replace(spec, head_dim=8), 2, b"\0" * (2 * spec.bytes_per_token))
    with pytest.raises(KVMismatch):
        kv_transfer.import_kv(runner.kv_caches, [0], bad, 4)
    with pytest.raises(KVMismatch):  # a table too short for the positions
        six = KVPayload(spec, 6, b"\0" * (6 * spec.bytes_per_token))
        kv_transfer.import_kv(runner.kv_caches, [0], six, 4)
    assert all(torch.equal(k, b) for (k, _), b in zip(runner.kv_caches, before, strict=True))


def test_fingerprint_tells_weights_apart(tiny_llama: Path, other_model: Path) -> None:
    fp = kv_transfer.model_fingerprint
    assert fp(tiny_llama, torch.float32, None) == fp(tiny_llama, torch.float32, None)
    assert fp(tiny_llama, torch.float32, None) != fp(other_model, torch.float32, None)
    assert fp(tiny_llama, torch.float32, None) != fp(tiny_llama, torch.bfloat16, None)
    assert fp(tiny_llama, torch.float32, None) != fp(tiny_llama, torch.float32, "nf4")
