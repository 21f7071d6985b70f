"""Request state export / resume."""

import json

import msgpack
import pytest
from isthmus.engine.core.convert import params_from_options
from isthmus.engine.core.core import EngineCore
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.state import InvalidState, RequestState
from isthmus.protocol import SamplingOptions, pack_ids


def test_round_trip_through_msgpack_and_json():
    st = RequestState("r", [1, 2], [3], SamplingParams(seed=9, stop=["x"], stop_token_ids=[4]), "hi", 2)
    for codec in (msgpack, json):
        raw = (
            codec.loads(codec.dumps(st.to_dict()))
            if codec is json
            else msgpack.unpackb(msgpack.packb(st.to_dict()))
        )
        back = RequestState.from_dict(raw)
        assert back == st and back.num_generated == 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("prompt_ids"),
        lambda d: d.update(version=99),
        lambda d: d.update(output_ids=["a"]),
        lambda d: d["params"].update(bogus=1),
        lambda d: d["params"].update(temperature=-1),
        lambda d: d.update(params=None),
    ],
)
def test_malformed_state_is_a_typed_error(mutate):
    d = RequestState("r", [1], [], SamplingParams(seed=1)).to_dict()
    mutate(d)
    with pytest.raises(InvalidState):
        RequestState.from_dict(d)
    with pytest.raises(InvalidState):
        RequestState.from_dict([1, 2])


def test_a_hand_over_is_prompt_with_its_streamed_text():
    p = SamplingParams(seed=5)
    st = RequestState.handed_over("h", [1, 2], [3, 4], "ab", p, priority=1)
    assert (st.prompt_ids, st.output_ids, st.num_generated) == ([1, 2, 3, 4], [], 0)
    assert (st.streamed_ids, st.text, st.priority, st.params) == ([3, 4], "ab", 1, p)
    migrated = RequestState("m", [1, 2], [3, 4], p, "ab")
    assert migrated.streamed_ids == [3, 4] and migrated.num_generated == 2
    back = RequestState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st and back.num_answer_prompt_ids == 2


def test_a_version_1_state_still_loads():
    d = RequestState("r", [1, 2], [3], SamplingParams(seed=1), "x").to_dict()
    del d["num_answer_prompt_ids"]
    d["version"] = 1
    assert RequestState.from_dict(d) == RequestState("r", [1, 2], [3], SamplingParams(seed=1), "x")


@pytest.mark.parametrize("bad", [-1, 3, "1", 1.0, None])
def test_answer_ids_beyond_the_prompt_are_a_typed_error(bad):
    d = RequestState("r", [1, 2], [3], SamplingParams(seed=1)).to_dict()
    d["num_answer_prompt_ids"] = bad
    with pytest.raises(InvalidState, match="num_answer_prompt_ids"):
        RequestState.from_dict(d)


def test_params_from_protocol_options():
    opts = SamplingOptions(
        max_tokens=5, temperature=0.5, top_k=3, seed=8, stop=["a"], stop_token_ids=pack_ids([7, 9])
    )
    p = params_from_options(opts)
    assert (p.max_tokens, p.temperature, p.top_k, p.seed, p.stop, p.stop_token_ids) == (
        5,
        0.5,
        3,
        8,
        ["a"],
        [7, 9],
    )


def run(core, rid):
    ids = []
    while core.has_unfinished:
        for out in core.step():
            if out.request_id == rid:
                ids += out.new_token_ids
    return ids


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
        SamplingParams(
            max_tokens=20, temperature=1.0, min_p=0.05, repetition_penalty=1.2, seed=3, ignore_eos=True
        ),
        SamplingParams(
            max_tokens=20, temperature=1.0, frequency_penalty=0.5, ignore_eos=True
        ),  # seed at admission
    ],
    ids=["greedy", "seeded", "unseeded"],
)
def test_resume_on_another_engine_is_token_identical(tiny_llama, params):
    opts = EngineOptions(model=str(tiny_llama), num_kv_blocks=64, block_size=4)
    prompt = [0, 17, 300, 42, 9, 77]
    a = EngineCore(opts)
    seq = a.add("r", prompt, params)
    got: list[int] = []
    while len(got) < 7:
        for out in a.step():
            got += out.new_token_ids
    state = RequestState.from_dict(msgpack.unpackb(msgpack.packb(a.export_state("r").to_dict())))
    assert state.output_ids == got and state.params.seed == seq.params.seed
    assert a.abort("r") and a.scheduler.block_manager.num_free_blocks == 64
    b = EngineCore(opts)
    b.add("r2", [], state.params, resume=state)
    resumed = state.output_ids + run(b, "r2")
    ref = EngineCore(opts)
    ref.add("r3", prompt, state.params)
    assert resumed == run(ref, "r3")
    assert len(resumed) == 20


def test_hand_over_then_migration_is_token_identical(tiny_llama):
    """An answer handed over (its ids are prompt: the seeded sampler starts at draw 0), exported
    mid-answer and resumed on a third engine, continues as a plain request on prompt + answer."""
    opts = EngineOptions(model=str(tiny_llama), num_kv_blocks=64, block_size=4)
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=11, ignore_eos=True)
    prompt, answer = [0, 17, 300, 42], [9, 77, 5]
    a = EngineCore(opts)
    a.add("h", [], params, resume=RequestState.handed_over("h", prompt, answer, "", params))
    got: list[int] = []
    while len(got) < 5:
        for out in a.step():
            got += out.new_token_ids
    state = RequestState.from_dict(msgpack.unpackb(msgpack.packb(a.export_state("h").to_dict())))
    assert (state.prompt_ids, state.output_ids, state.num_answer_prompt_ids) == (prompt + answer, got, 3)
    assert state.streamed_ids == answer + got
    b = EngineCore(opts)
    b.add("m", [], params, resume=state)
    ref = EngineCore(opts)
    ref.add("ref", prompt + answer, params)
    assert got + run(b, "m") == run(ref, "ref")
