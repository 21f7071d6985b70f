"""Filters as per-row floors (`engine/runner/sample_filters.py`) and draws through them, against
the full-vocabulary oracles, at vocab 32 and 102,400."""

import pytest
import torch
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.runner.sample_filters import filter_floors
from isthmus.engine.runner.sampler import sample

from ._sampling_ref import V, brute_mask, filter_mask, rand_logits, reference_sample, seq


@pytest.mark.parametrize(
    "k,p,m", [(5, 1.0, 0.0), (0, 0.6, 0.0), (0, 1.0, 0.2), (8, 0.5, 0.05), (1, 1.0, 0.0), (3, 0.3, 0.0)]
)
@pytest.mark.parametrize("temp", [1.0, 0.6])
def test_filter_floors_keep_what_brute_force_keeps(k, p, m, temp):
    logits = rand_logits(3, seed=11)
    lp = torch.log_softmax(logits / temp, -1)
    params = [SamplingParams(temperature=temp, top_k=k, top_p=p, min_p=m)] * 3
    floors = filter_floors(logits, torch.full((3,), temp), params)
    for i in range(3):
        assert torch.equal(logits[i] < floors[i], brute_mask(lp[i], k, p, m))
        assert torch.equal(logits[i] < floors[i], filter_mask(lp[i : i + 1], [k], [p], [m])[0])


def test_ties_with_the_last_kept_logit_are_kept():
    """bf16 logits tie often: every token equal to the k-th (or to top-p's last) survives, so
    the kept set does not depend on how a device orders equal values."""
    x = torch.full((1, V), -4.0, dtype=torch.bfloat16)
    x[0, [3, 9, 17, 20]] = torch.tensor([6.0, 5.0, 5.0, 5.0], dtype=torch.bfloat16)
    floors = filter_floors(x, torch.ones(1), [SamplingParams(top_k=2)])
    assert set((x[0].float() >= floors[0]).nonzero()[:, 0].tolist()) == {3, 9, 17, 20}
    probs = torch.softmax(x[0].float(), -1)
    p = float(probs[3] + probs[9]) - 1e-4  # reached at the first 5.0: all three ties stay
    floors = filter_floors(x, torch.ones(1), [SamplingParams(top_k=3, top_p=p)])
    assert float(floors[0]) == 5.0
    params = SamplingParams(top_k=2, seed=4)
    drawn = {sample(x, [seq(params, num_generated=n)])[0].token_id for n in range(300)}
    assert drawn == {3, 9, 17, 20}


def test_sampled_tokens_stay_inside_the_filters():
    logits = rand_logits(1, seed=2)
    lp = torch.log_softmax(logits[0], -1)
    allowed = set(lp.topk(3).indices.tolist())
    for n in range(200):
        t = sample(logits, [seq(SamplingParams(top_k=3, seed=9), num_generated=n)])[0]
        assert t.token_id in allowed


def test_deepseek_vocab_same_draws_as_the_full_log_softmax_sampler():
    """Vocab 102,400 through the PyTorch paths: plain temperature, top-k with top-p (the bounded
    candidates), top-p alone on a peaked row and on a flat one (its mass lies past the 1,024
    candidates: the full-sort fallback), min-p, a penalty; float32 and bf16 logits."""
    vocab = 102400
    kinds = [
        SamplingParams(temperature=0.8, seed=1),
        SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=2),
        SamplingParams(temperature=0.7, top_p=0.95, seed=3),
        SamplingParams(temperature=1.0, top_p=0.9, seed=4),
        SamplingParams(temperature=1.1, min_p=0.05, seed=5),
        SamplingParams(temperature=0.9, top_k=20, frequency_penalty=0.5, seed=6),
    ]
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(len(kinds), vocab, generator=g) * 4
    logits[3] = torch.randn(vocab, generator=g) * 0.3  # flat: top-p keeps most of the vocabulary
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        for n in (0, 17):
            seqs = [seq(p, history=[5, 9, 9, 12], prompt_len=2, num_generated=n, seq_id=i)
                    for i, p in enumerate(kinds)]
            got = sample(x.clone(), seqs)
            for t, (tok, lp, ent) in zip(got, reference_sample(x.float(), seqs), strict=True):
                assert t.token_id == tok
                assert t.logprob == pytest.approx(lp, abs=1e-4)
                assert t.entropy == pytest.approx(ent, abs=1e-3)
