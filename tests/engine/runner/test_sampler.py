import math

import pytest
import torch
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.runner.sampler import sample, uniform_noise

from ._sampling_ref import V, rand_logits, reference_sample, seq


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


def test_same_tokens_logprobs_and_entropies_as_the_full_log_softmax_sampler():
    kinds = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, seed=3),
        SamplingParams(temperature=1.0, top_k=5, seed=4),
        SamplingParams(temperature=1.3, top_p=0.8, min_p=0.02, seed=5),
        SamplingParams(temperature=0.0, repetition_penalty=1.2, logprobs=2),
        SamplingParams(temperature=0.9, presence_penalty=0.5, seed=6, logprobs=0),
    ]
    for trial in range(40):
        logits = rand_logits(len(kinds), seed=100 + trial)
        seqs = [
            seq(p, history=[1, 2, 3, trial % V, 7], prompt_len=3, num_generated=trial, seq_id=i)
            for i, p in enumerate(kinds)
        ]
        ours = sample(logits.clone(), seqs)
        for got, (tok, lp, ent) in zip(ours, reference_sample(logits, seqs), strict=True):
            assert got.token_id == tok
            assert got.logprob == pytest.approx(lp, abs=1e-5)
            assert got.entropy == pytest.approx(ent, abs=1e-5)


def test_log_softmax_only_for_rows_that_ask_for_top_logprobs(monkeypatch):
    rows = []
    real = torch.log_softmax

    def counting(x, *a, **k):
        rows.append(x.shape[0] if x.dim() == 2 else 1)
        return real(x, *a, **k)

    monkeypatch.setattr(torch, "log_softmax", counting)
    kinds = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, seed=1),
             SamplingParams(top_k=4, top_p=0.7, seed=2), SamplingParams(top_p=0.5, min_p=0.1, seed=3)]
    sample(rand_logits(4), [seq(p, seq_id=i) for i, p in enumerate(kinds)])
    assert rows == []
    kinds[2] = SamplingParams(top_k=4, top_p=0.7, seed=2, logprobs=3)
    out = sample(rand_logits(4), [seq(p, seq_id=i) for i, p in enumerate(kinds)])
    assert rows == [1] and len(out[2].top_logprobs) == 3
    lp = real(rand_logits(4)[2], -1)  # temperature 1: the unfiltered distribution's top 3
    assert [i for i, _ in out[2].top_logprobs] == lp.topk(3).indices.tolist()


def test_entropy_is_computed_only_for_rows_that_want_it(monkeypatch):
    from isthmus.engine.runner import sampler

    wants = []
    for name in ("row_stats", "gumbel_draw"):
        real = getattr(sampler, name)
        monkeypatch.setattr(sampler, name, lambda *a, _r=real, **k: wants.append(a[-1]) or _r(*a, **k))
    off = [SamplingParams(temperature=0.0, entropy=False), SamplingParams(seed=1, entropy=False)]
    out = sample(rand_logits(2), [seq(p, seq_id=i) for i, p in enumerate(off)])
    assert wants == [False, False] and all(math.isnan(t.entropy) for t in out)


def test_entropy_off_is_nan_and_changes_nothing_else():
    logits = rand_logits(3, seed=8)
    on = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=2),
          SamplingParams(temperature=0.0)]
    off = [SamplingParams(temperature=p.temperature, seed=p.seed, entropy=False) for p in on]
    mixed = [on[0], off[1], off[2]]
    a = sample(logits, [seq(p, seq_id=i) for i, p in enumerate(on)])
    for params in (off, mixed):
        b = sample(logits, [seq(p, seq_id=i) for i, p in enumerate(params)])
        for x, y, p in zip(a, b, params, strict=True):
            assert (x.token_id, x.logprob) == (y.token_id, y.logprob)
            assert math.isnan(y.entropy) if not p.entropy else y.entropy == x.entropy


def test_bf16_logits_greedy_without_an_fp32_copy_of_the_batch():
    logits = rand_logits(4, seed=9).to(torch.bfloat16)
    out = sample(logits, [seq(SamplingParams(temperature=0.0), seq_id=i) for i in range(4)])
    lp = torch.log_softmax(logits.float(), -1)
    for i, t in enumerate(out):
        assert t.token_id == int(logits[i].float().argmax())
        assert t.logprob == pytest.approx(float(lp[i, t.token_id]), abs=1e-4)
        assert t.entropy == pytest.approx(float(-(lp[i].exp() * lp[i]).sum()), abs=1e-4)


def test_one_device_to_host_copy_per_call(monkeypatch):
    calls = []
    real = torch.Tensor.cpu

    def counting(self, *a, **k):
        calls.append(tuple(self.shape))
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    params = [SamplingParams(temperature=0.0, logprobs=3),
              SamplingParams(temperature=0.5, seed=1, logprobs=1)]
    out = sample(rand_logits(2), [seq(p, seq_id=i) for i, p in enumerate(params)])
    assert len(calls) == 1
    assert len(out[0].top_logprobs) == 3 and len(out[1].top_logprobs) == 1


_ROW_STATS_CHECK = """
import torch
from isthmus.engine.kernels.sample_stats import row_stats
torch.manual_seed(0)
cases = []
for n, vocab in [(1, 102400), (3, 4097), (2, 1), (4, 32)]:
    for dtype in (torch.float32, torch.bfloat16):
        cases.append((torch.randn(n, vocab) * 4).to(dtype))
ties = torch.zeros(2, 5000)
ties[0, [7, 2100, 4999]] = 3.0  # equal maxima in different lanes and blocks: the first wins
ties[1, 4096:] = float("-inf")  # a masked tail
cases.append(ties)
for x in cases:
    for want in (True, False):
        ti, tl, te = row_stats(x, want, use_triton=True)
        ri, rl, re = row_stats(x, want, use_triton=False)
        assert torch.equal(ti, ri), (tuple(x.shape), x.dtype, ti, ri)
        torch.testing.assert_close(tl, rl, rtol=1e-5, atol=1e-5)
        assert (te is None) == (not want)
        if want:
            torch.testing.assert_close(te, re, rtol=1e-4, atol=2e-4)
print("ROW_STATS_OK", len(cases))
"""


def test_row_stats_kernel_in_triton_interpreter():
    """The fused argmax / log-sum-exp / entropy kernel against PyTorch, on CPU (the interpreter)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _ROW_STATS_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "ROW_STATS_OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_greedy_on_cuda_matches_cpu_reference():
    logits = (torch.randn(8, 102400) * 4).to(torch.bfloat16)
    seqs = [seq(SamplingParams(temperature=0.0), seq_id=i) for i in range(8)]
    gpu, cpu = sample(logits.cuda(), seqs), sample(logits, seqs)
    for a, b in zip(gpu, cpu, strict=True):
        assert a.token_id == b.token_id
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert a.entropy == pytest.approx(b.entropy, abs=1e-3)


_CUDA_KINDS = [
    SamplingParams(temperature=0.0, logprobs=2),
    SamplingParams(temperature=0.8, seed=1),
    SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=2, entropy=False),
    SamplingParams(temperature=0.7, top_p=0.95, seed=3),
    SamplingParams(temperature=1.1, min_p=0.05, seed=4, logprobs=3),
    SamplingParams(temperature=0.9, top_k=20, repetition_penalty=1.2, frequency_penalty=0.3, seed=5),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampled_rows_on_cuda_match_cpu_without_a_sync():
    """Every kind of row through the kernels on bf16 logits: the CPU's tokens, and nothing in
    `sample_async` synchronises with the device (the one copy is asynchronous, into pinned memory)."""
    from isthmus.engine.runner.sampler import sample_async

    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(len(_CUDA_KINDS), 102400, generator=g) * 4).to(torch.bfloat16)
    seqs = [seq(p, history=[5, 9, 9, 12], prompt_len=2, num_generated=3, seq_id=i)
            for i, p in enumerate(_CUDA_KINDS)]
    dev = logits.cuda()
    sample(dev, seqs)  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        finish = sample_async(dev, seqs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu, cpu = finish(), sample(logits, seqs)
    for a, b in zip(gpu, cpu, strict=True):
        assert a.token_id == b.token_id
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        if math.isnan(b.entropy):
            assert math.isnan(a.entropy)
        else:
            assert a.entropy == pytest.approx(b.entropy, abs=1e-3)
