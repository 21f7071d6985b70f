"""Output processing of answers begun on another engine: replayed text, stop strings across the join.

An edge that hands an answer over sends the ids it generated and the text it streamed. Its
detokenizer may have been holding half a character, and its stop-string matcher text that could
start a stop string: neither reached the client. The engine continuing the answer must emit that
text first and match stop strings across the join.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from isthmus.engine.core.core import EngineCore
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.output_processor import OutputProcessor
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.sequence import Sequence, SeqUpdate
from isthmus.engine.core.state import RequestState
from isthmus.tokenizer import Tokenizer


class _NoScheduler:
    def finish(self, seq_id: int, reason: str) -> None:
        raise AssertionError("no stop string in this test")


def _state(
    how: str, prompt: list[int], answer: list[int], text: str, stop: list[str] | None = None
) -> RequestState:
    """The answer begun elsewhere as a hand-over (prompt to this engine) or a migration (output)."""
    params = SamplingParams(seed=1, stop=stop or [])
    if how == "handed_over":
        return RequestState.handed_over("r", prompt, answer, text, params)
    return RequestState("r", prompt, answer, params, text)


def _seq(state: RequestState) -> Sequence:
    ids = state.prompt_ids
    return Sequence(0, "r", ids, state.params, all_ids=[*ids, *state.output_ids])


@pytest.mark.parametrize("how", ["handed_over", "migrated"])
def test_half_character_from_the_other_engine_is_completed(tiny_llama: Path, how: str) -> None:
    tok = Tokenizer.from_dir(tiny_llama)
    prompt = tok.encode("Say it:", add_special_tokens=False)
    char = tok.encode("\u9f8d", add_special_tokens=False)  # 龍: three UTF-8 bytes, three byte tokens
    assert len(char) == 3 and tok.decode(char[:2]) != "\u9f8d"
    proc = OutputProcessor(tok, _NoScheduler())  # type: ignore[arg-type]
    # The other engine generated the first two bytes and streamed nothing of them.
    state = _state(how, prompt, char[:2], "")
    seq = _seq(state)
    proc.add(seq, state)
    seq.all_ids.append(char[2])
    (out,) = proc.process([SeqUpdate(seq, new_token_ids=[char[2]])])
    assert out.text_delta == "\u9f8d"


@pytest.mark.parametrize("how", ["handed_over", "migrated"])
def test_text_held_back_elsewhere_goes_out_first(tiny_llama: Path, how: str) -> None:
    tok = Tokenizer.from_dir(tiny_llama)
    prompt = tok.encode("Say it:", add_special_tokens=False)
    done = tok.encode(" hello world", add_special_tokens=False)
    proc = OutputProcessor(tok, _NoScheduler())  # type: ignore[arg-type]
    # The client received " hello"; " world" was held back (it could have started a stop string).
    state = _state(how, prompt, done, " hello", stop=[" world peace"])
    seq = _seq(state)
    proc.add(seq, state)
    assert proc.streamed("r") == (" hello", len(state.prompt_ids) - len(prompt))
    nxt = tok.encode("!", add_special_tokens=False)
    seq.all_ids += nxt
    (out,) = proc.process([SeqUpdate(seq, new_token_ids=nxt, finish_reason="length")])
    assert out.text_delta == " world!"
    assert proc.streamed("r") == ("", 0)  # finished: no longer tracked


def _greedy(model: Path) -> tuple[EngineCore, SamplingParams]:
    core = EngineCore(EngineOptions(model=str(model), num_kv_blocks=64, block_size=4, max_model_len=128))
    return core, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


def _run(core: EngineCore, rid: str, limit: int | None = None) -> tuple[list[int], list[str], str | None]:
    """(ids, text deltas, finish reason) of `rid`, stopping after `limit` tokens if given."""
    ids: list[int] = []
    deltas: list[str] = []
    finish = None
    while core.has_unfinished and finish is None:
        for out in core.step():
            if out.request_id == rid:
                ids += out.new_token_ids
                deltas.append(out.text_delta)
                finish = out.finish_reason
        if limit is not None and len(ids) >= limit:
            core.abort(rid)
            break
    return ids, deltas, finish


@pytest.mark.parametrize("join", [6, 11, 17])
def test_stop_string_spanning_a_hand_over_is_found(tiny_llama: Path, join: int) -> None:
    core, params = _greedy(tiny_llama)
    prompt = core.tokenizer.encode("The river", add_special_tokens=True)
    core.add("whole", prompt, params)
    ids, deltas, _ = _run(core, "whole")
    # A stop string made of the end of the text before the join and the start of the text after.
    before, after = "".join(deltas[:join]), "".join(deltas[join:])
    assert before and after
    stop = before[-3:] + after[:3]
    first = (before + after).find(stop)
    assert first == len(before) - 3, "pick another join: the stop string occurs earlier"
    expected_text = before[:-3]

    # Uninterrupted, with the stop string.
    core.add("alone", prompt, _with_stop(params, stop))
    _, alone, finish = _run(core, "alone")
    assert ("".join(alone), finish) == (expected_text, "stop")

    # The "edge" generates `join` tokens and is cut off; the "center" continues from its ids.
    core.add("edge", prompt, _with_stop(params, stop))
    edge_ids, edge_deltas, _ = _run(core, "edge", limit=join)
    streamed = "".join(edge_deltas)
    assert edge_ids == ids[: len(edge_ids)] and len(streamed) < len(before)  # text was held back
    state = RequestState.handed_over("center", prompt, edge_ids, streamed, _with_stop(params, stop))
    core.add("center", [], params, resume=state)
    _, center_deltas, finish = _run(core, "center")
    assert (streamed + "".join(center_deltas), finish) == (expected_text, "stop")


def _with_stop(params: SamplingParams, stop: str) -> SamplingParams:
    return dataclasses.replace(params, stop=[stop])
