"""The scheduler's side of a KV migration: a sequence that brought its KV skips its prefill."""

from __future__ import annotations

import dataclasses

import pytest
from isthmus.engine.core.kv_blocks import KVMismatch, KVPayload, KVSpec, check_payload, usable_payload
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput, SampledToken
from isthmus.engine.core.scheduler import InvalidRequest, Scheduler

SPEC = KVSpec(fingerprint="f" * 64, dtype="float16", num_layers=2, num_kv_heads=2, head_dim=4, block_size=4)


def _payload(num_tokens: int, spec: KVSpec = SPEC) -> KVPayload:
    return KVPayload(spec, num_tokens, b"\1" * (num_tokens * spec.bytes_per_token))


def _scheduler(num_blocks: int = 16) -> Scheduler:
    return Scheduler(num_kv_blocks=num_blocks, block_size=4, max_model_len=64, max_num_batched_tokens=64)


PARAMS = SamplingParams(max_tokens=20, temperature=0.0, seed=1)


def test_spec_bytes_per_token() -> None:
    assert SPEC.bytes_per_token == 2 * 2 * 2 * 4 * 2
    assert dataclasses.replace(SPEC, dtype="float32").bytes_per_token == 2 * 2 * 2 * 4 * 4


def test_admitted_with_every_position_but_the_last_computed() -> None:
    s = _scheduler()
    prompt, out = list(range(1, 10)), [11, 12, 13]  # 12 ids: KV for 11 positions
    kv = _payload(11)
    seq = s.add("r", prompt, PARAMS, output_ids=out, kv=kv)
    plan = s.schedule(0.0)
    [row] = plan.seqs
    assert (row.token_ids, row.start_pos, row.do_sample, row.num_generated) == ([13], 11, True, 3)
    [imp] = plan.kv_imports
    assert imp.seq_id == seq.seq_id and imp.payload is kv and imp.block_table == row.block_table
    assert len(imp.block_table) == 3  # 12 positions in blocks of 4
    assert s.num_kv_imports == 1 and not s.kv_imports
    s.postprocess(plan, RunOutput(sampled={seq.seq_id: SampledToken(14, 0.0, 0.0)}))
    assert seq.all_ids[-1] == 14 and seq.num_computed == 12
    plan = s.schedule(0.0)  # then an ordinary decode, nothing to import
    assert [r.token_ids for r in plan.seqs] == [[14]] and not plan.kv_imports


def test_an_import_waits_for_room_like_any_admission() -> None:
    s = _scheduler(num_blocks=4)
    s.add("big", list(range(1, 13)), PARAMS)  # 12 tokens: 3 of the 4 blocks
    s.schedule(0.0)
    s.add("r", list(range(1, 9)), PARAMS, output_ids=[1], kv=_payload(8))  # needs 3 blocks
    assert not s.schedule(0.0).kv_imports  # no room: still waiting, payload kept
    assert s.num_waiting == 1 and len(s.kv_imports) == 1
    s.abort("big")
    plan = s.schedule(0.0)
    assert len(plan.kv_imports) == 1 and plan.seqs[-1].start_pos == 8


def test_aborting_a_waiting_import_drops_its_payload() -> None:
    s = _scheduler()
    s.add("r", [1, 2, 3], PARAMS, output_ids=[4], kv=_payload(3))
    assert s.abort("r") and not s.kv_imports
    s.block_manager.check_invariants()
    assert s.block_manager.num_free_blocks == 16


def test_a_payload_of_the_wrong_length_is_refused() -> None:
    s = _scheduler()
    with pytest.raises(InvalidRequest, match="kv"):
        s.add("r", [1, 2, 3], PARAMS, output_ids=[4], kv=_payload(4))
    assert not s.kv_imports and s.num_waiting == 0


def test_a_preempted_import_recomputes_its_prefill() -> None:
    s = _scheduler(num_blocks=4)
    seq = s.add("r", list(range(1, 8)), PARAMS, output_ids=[9], kv=_payload(7))
    plan = s.schedule(0.0)
    assert plan.kv_imports
    s._preempt(seq, plan)  # as the scheduler does when the pool runs short
    plan = s.schedule(0.0)
    assert not plan.kv_imports and plan.seqs[0].start_pos == 0 and len(plan.seqs[0].token_ids) == 8


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"fingerprint": "other"}, "fingerprint"),
        ({"dtype": "float32"}, "dtype"),
        ({"num_layers": 3}, "num_layers"),
        ({"num_kv_heads": 1}, "num_kv_heads"),
        ({"head_dim": 8}, "head_dim"),
        ({"tp_size": 2}, "tp_size"),
        ({"layout": "token,layer"}, "layout"),
    ],
)
def test_check_payload_names_what_differs(change: dict[str, object], field: str) -> None:
    other = dataclasses.replace(SPEC, **change)  # type: ignore[arg-type]
    with pytest.raises(KVMismatch, match=rf"kv\.{field}"):
        check_payload(SPEC, _payload(5, other), 5)
    assert usable_payload(SPEC, _payload(5, other), 5) is None


def test_check_payload_ignores_the_block_size_and_checks_lengths() -> None:
    check_payload(SPEC, _payload(5, dataclasses.replace(SPEC, block_size=16)), 5)
    with pytest.raises(KVMismatch, match="num_tokens"):
        check_payload(SPEC, _payload(5), 6)
    with pytest.raises(KVMismatch, match=r"kv\.data"):
        check_payload(SPEC, KVPayload(SPEC, 5, b"\0" * 7), 5)
    kv = _payload(5)
    assert usable_payload(SPEC, kv, 5) is kv
    assert usable_payload(None, kv, 5) is None  # a runner that cannot import KV
    assert usable_payload(SPEC, None, 5) is None
