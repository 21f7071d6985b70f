import math

import pytest
import torch
from isthmus.engine.params import SamplingParams
from isthmus.engine.plan import ScheduledSeq
from isthmus.engine.sampler import filter_mask, sample, uniform_noise

V = 32


def seq(
    params: SamplingParams, history=(1, 2, 3), prompt_len=None, num_generated=0, seq_id=0
) -> ScheduledSeq:
    history = list(history)
    return ScheduledSeq(
        seq_id=seq_id,
        token_ids=history[-1:],
        start_pos=len(history) - 1,
        block_table=[0],
        do_sample=True,
        params=params,
        prompt_len=len(history) if prompt_len is None else prompt_len,
        history_ids=history,
        num_generated=num_generated,
    )


def rand_logits(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * 3


def test_greedy_is_argmax_and_logprob_entropy_are_exact():
    logits = rand_logits(4)
    seqs = [seq(SamplingParams(temperature=0.0, logprobs=3), seq_id=i) for i in range(4)]
    out = sample(logits, seqs)
    lp = torch.log_softmax(logits, -1)
    for i, t in enumerate(out):
        assert t.token_id == int(logits[i].argmax())
        assert t.logprob == pytest.approx(float(lp[i, t.token_id]), abs=1e-5)
        ent = float(-(lp[i].exp() * lp[i]).sum())
        assert t.entropy == pytest.approx(ent, abs=1e-5)
        top = lp[i].topk(3)
        assert [tid for tid, _ in t.top_logprobs] == top.indices.tolist()
    assert sample(logits[:1], [seq(SamplingParams(temperature=0.0))])[0].top_logprobs is None


def test_temperature_changes_logprob_and_entropy():
    logits = rand_logits(1)
    out = sample(logits, [seq(SamplingParams(temperature=2.0, seed=1))])[0]
    lp = torch.log_softmax(logits[0] / 2.0, -1)
    assert out.logprob == pytest.approx(float(lp[out.token_id]), abs=1e-5)
    assert out.entropy == pytest.approx(float(-(lp.exp() * lp).sum()), abs=1e-5)


def reference_penalties(logits, history, prompt_len, rp, pres, freq):
    logits = logits.clone()
    for t in set(history):
        logits[t] = logits[t] / rp if logits[t] > 0 else logits[t] * rp
    gen = history[prompt_len:]
    for t in set(gen):
        logits[t] -= pres + freq * gen.count(t)
    return logits


@pytest.mark.parametrize("rp,pres,freq", [(1.3, 0.0, 0.0), (1.0, 0.7, 0.0), (1.0, 0.0, 0.4), (0.8, 0.5, 0.3)])
def test_penalties_match_reference(rp, pres, freq):
    logits = rand_logits(3, seed=5)
    histories = [[1, 2, 2, 5, 9, 9, 9], [0, 3, 3], [4, 4, 4, 7, 7]]
    seqs = [
        seq(
            SamplingParams(
                temperature=0.0,
                repetition_penalty=rp,
                presence_penalty=pres,
                frequency_penalty=freq,
                logprobs=V,
            ),
            history=h,
            prompt_len=2,
            seq_id=i,
        )
        for i, h in enumerate(histories)
    ]
    out = sample(logits, seqs)
    for i, h in enumerate(histories):
        ref = reference_penalties(logits[i], h, 2, rp, pres, freq)
        ref_lp = torch.log_softmax(ref, -1)
        assert out[i].token_id == int(ref.argmax())
        got = dict(out[i].top_logprobs)
        assert all(got[t] == pytest.approx(float(ref_lp[t]), abs=1e-5) for t in range(V))


def brute_mask(lp, k, p, m):
    probs = lp.exp()
    order = sorted(range(V), key=lambda t: -float(probs[t]))
    keep = set(order[:k] if k > 0 else order)
    kept = [t for t in order if t in keep]
    total = sum(float(probs[t]) for t in kept)
    mass, keep_p = 0.0, set()
    for t in kept:
        if mass >= p:
            break
        keep_p.add(t)
        mass += float(probs[t]) / total
    keep_m = {t for t in range(V) if float(probs[t]) >= m * float(probs.max())}
    keep = keep_p & keep_m
    keep.add(order[0])
    return torch.tensor([t not in keep for t in range(V)])


@pytest.mark.parametrize(
    "k,p,m", [(5, 1.0, 0.0), (0, 0.6, 0.0), (0, 1.0, 0.2), (8, 0.5, 0.05), (1, 1.0, 0.0)]
)
def test_filter_masks_match_brute_force(k, p, m):
    lp = torch.log_softmax(rand_logits(3, seed=11), -1)
    mask = filter_mask(lp, [k] * 3, [p] * 3, [m] * 3)
    for i in range(3):
        assert torch.equal(mask[i], brute_mask(lp[i], k, p, m))


def test_sampled_tokens_stay_inside_the_filters():
    logits = rand_logits(1, seed=2)
    lp = torch.log_softmax(logits[0], -1)
    allowed = set(lp.topk(3).indices.tolist())
    for n in range(200):
        t = sample(logits, [seq(SamplingParams(top_k=3, seed=9), num_generated=n)])[0]
        assert t.token_id in allowed


def test_seeded_draw_independent_of_batch_composition_and_position():
    logits = rand_logits(6, seed=3)
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=1234)
    alone = sample(logits[2:3], [seq(params, num_generated=7)])[0].token_id
    others = [seq(SamplingParams(temperature=1.0, seed=i), num_generated=i, seq_id=i) for i in range(6)]
    others[4] = seq(params, num_generated=7, seq_id=99)
    batch_logits = logits.clone()
    batch_logits[4] = logits[2]
    assert sample(batch_logits, others)[4].token_id == alone
    # unseeded-in-params requests get seeds at admission; same (seed, n) -> same draw
    draws = {sample(logits[2:3], [seq(params, num_generated=n)])[0].token_id for n in range(40)}
    assert len(draws) > 1  # the position n changes the draw


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [1e-9] * (V - 4)]))
    counts = [0] * V
    n = 3000
    for i in range(n):
        counts[sample(logits, [seq(SamplingParams(seed=i))])[0].token_id] += 1
    for t, p in enumerate([0.5, 0.3, 0.15, 0.05]):
        assert abs(counts[t] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 0.005


def test_uniform_noise_is_in_open_interval_and_deterministic():
    u = uniform_noise([1, 2**63 + 5], 1000, torch.device("cpu"))
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert torch.equal(u, uniform_noise([1, 2**63 + 5], 1000, torch.device("cpu")))
    assert abs(float(u.mean()) - 0.5) < 0.03


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError):
        sample(rand_logits(2), [seq(SamplingParams())])
