"""Offline LLM on tiny checkpoints: greedy output equals transformers' generate."""

import pytest
import torch
from isthmus.engine.core.llm import LLM
from isthmus.engine.core.params import SamplingParams

transformers = pytest.importorskip("transformers")


def hf_greedy(path, prompt_ids, n):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        # explicit mask: the tiny tokenizer's BOS id would otherwise be taken for padding
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_llama3_rope"])
def test_greedy_matches_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    llm = LLM(str(path), num_kv_blocks=64, block_size=4, max_num_batched_tokens=16)
    prompts = [
        "hello world",
        "the quick brown fox jumps over the lazy dog",
        [{"role": "user", "content": "hi"}],
    ]
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    outs = llm.generate(prompts, params)
    for out in outs:
        assert out.finish_reason == "length" and out.usage.completion_tokens == 10
        assert out.token_ids == hf_greedy(path, out.prompt_ids, 10)
        assert out.text == llm.tokenizer.decode(out.token_ids)
    assert llm.core.scheduler.block_manager.num_free_blocks == 64


def test_prompt_forms_and_single_prompt(tiny_llama):
    llm = LLM(str(tiny_llama), num_kv_blocks=32)
    tok = llm.tokenizer
    ids = tok.encode("hello world", add_special_tokens=True)
    assert ids[0] == tok.bos_token_id
    p = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    [a] = llm.generate("hello world", p)
    [b] = llm.generate(ids, p)
    assert a.token_ids == b.token_ids and a.prompt_ids == ids
    [c] = llm.generate([{"role": "user", "content": "hello"}], p)
    assert c.prompt_ids == tok.encode_chat([{"role": "user", "content": "hello"}])
    with pytest.raises(ValueError):
        llm.generate(["a", "b"], [p])
    with pytest.raises(TypeError):
        llm.generate([[1.5]], p)


def test_stop_strings_and_stop_token_ids(tiny_llama):
    llm = LLM(str(tiny_llama), num_kv_blocks=64)
    base = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    [full] = llm.generate("once upon a time", base)
    # stop token id: output ends at its first occurrence
    stop_tok = full.token_ids[5]
    [st] = llm.generate("once upon a time", SamplingParams(**{**_kw(base), "stop_token_ids": [stop_tok]}))
    assert st.finish_reason == "stop"
    assert st.token_ids == full.token_ids[: full.token_ids.index(stop_tok) + 1]
    # stop string: text is cut before it and the request ends early
    text = full.text
    stop = next(
        (
            text[i : i + 2]
            for i in range(3, len(text) - 2)
            if text[i : i + 2].strip() and "\ufffd" not in text[i : i + 2]
        ),
        None,
    )
    assert stop is not None
    [ss] = llm.generate("once upon a time", SamplingParams(**{**_kw(base), "stop": [stop]}))
    assert ss.finish_reason == "stop"
    assert ss.text == text[: text.index(stop)]
    assert len(ss.token_ids) < len(full.token_ids)


def test_seeded_sampling_is_reproducible_and_logprobs_are_returned(tiny_qwen2):
    llm = LLM(str(tiny_qwen2), num_kv_blocks=64)
    p = SamplingParams(max_tokens=12, temperature=0.9, top_k=50, top_p=0.95, seed=42, ignore_eos=True)
    a, b = llm.generate(["hello", "hello"], p)
    assert a.token_ids == b.token_ids
    assert len(a.logprobs) == len(a.entropies) == 12
    assert all(lp <= 0 for lp in a.logprobs) and all(e >= 0 for e in a.entropies)
    [c] = llm.generate("hello", SamplingParams(**{**_kw(p), "seed": 43}))
    assert c.token_ids != a.token_ids


def _kw(p: SamplingParams) -> dict:
    import dataclasses

    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
