"""Checks of the sampling kernels (`gumbel_sample`, `nucleus`) against their PyTorch references.

Shared by the CPU tests (run in a subprocess under TRITON_INTERPRET=1) and the GPU tests (called
with "cuda"). Vocabularies: DeepSeek's 102,400 and small ones (the tiny test model's, odd sizes
that leave a partial last block).
"""

from __future__ import annotations

import torch


def _logits(n: int, vocab: int, scale: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, vocab, generator=g) * scale).to(dtype)


def check_gumbel(device: str) -> None:
    """Kernel draw == PyTorch draw (token exactly; lse and entropy to float32 rounding), with and
    without floors, float32 and bf16, for vocabularies 102,400, 4,097 and 32."""
    from isthmus.engine.kernels.gumbel_sample import as_i64, gumbel_draw, row_key

    for n, vocab in [(2, 102400), (3, 4097), (4, 32)]:
        for dtype in (torch.float32, torch.bfloat16):
            x = _logits(n, vocab, 3.0, dtype, seed=vocab + n)
            temps = torch.linspace(0.4, 1.7, n)
            floors = torch.full((n,), float("-inf"))
            floors[0] = float(x[0].float().max()) - 1.5  # a filtered row next to unfiltered ones
            keys = torch.tensor([as_i64(row_key(11 * i + 1, 5 + i)) for i in range(n)])
            args = [t.to(device) for t in (x, temps, floors, keys)]
            for want in (True, False):
                tok, lse, ent = gumbel_draw(*args, want, use_triton=True)
                rtok, rlse, rent = gumbel_draw(x, temps, floors, keys, want, use_triton=False)
                assert torch.equal(tok.cpu(), rtok), (vocab, dtype, tok, rtok)
                assert float(x[0, int(rtok[0])].float()) >= float(floors[0])
                torch.testing.assert_close(lse.cpu(), rlse, rtol=1e-5, atol=1e-5)
                assert (ent is None) == (rent is None) == (not want)
                if ent is not None and rent is not None:
                    torch.testing.assert_close(ent.cpu(), rent, rtol=1e-4, atol=2e-4)


def check_nucleus(device: str) -> None:
    """Bisection floors == candidate / sort floors exactly: peaked rows (the floor among the
    first candidates), flat rows (the mass spread past every candidate: the sort fallback) and
    bf16 rows with ties."""
    from isthmus.engine.kernels.nucleus import nucleus_floor

    cases = [(1, 102400, 6.0, torch.bfloat16), (1, 102400, 0.5, torch.float32), (3, 4097, 3.0, torch.float32),
             (4, 32, 3.0, torch.bfloat16)]
    for n, vocab, scale, dtype in cases:
        x = _logits(n, vocab, scale, dtype, seed=n * vocab)
        temps = torch.linspace(0.5, 1.5, n)
        top_p = torch.tensor([0.9, 0.35, 0.99, 0.6][:n])
        got = nucleus_floor(x.to(device), temps.to(device), top_p.to(device), use_triton=True).cpu()
        ref = nucleus_floor(x, temps, top_p, use_triton=False)
        assert torch.equal(got, ref), (vocab, scale, dtype, got, ref)


def check_sampler_without_sync() -> None:
    """The sampler through the kernels (as on CUDA): same tokens as through PyTorch, and no
    host read of device values before the one copy (no item / bool / nonzero)."""
    from isthmus.engine.core.params import SamplingParams
    from isthmus.engine.core.plan import ScheduledSeq
    from isthmus.engine.runner import sampler
    from torch.utils._python_dispatch import TorchDispatchMode

    kinds = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=1),
             SamplingParams(temperature=1.0, top_k=40, top_p=0.9, seed=2, entropy=False),
             SamplingParams(temperature=0.7, top_p=0.8, seed=3),
             SamplingParams(min_p=0.1, seed=4, logprobs=2),
             SamplingParams(temperature=1.2, top_k=7, presence_penalty=0.3, seed=5)]
    seqs = [ScheduledSeq(seq_id=i, token_ids=[3], start_pos=2, block_table=[0], do_sample=True, params=p,
                         prompt_len=2, history_ids=[1, 2, 3], num_generated=9) for i, p in enumerate(kinds)]
    x = _logits(len(kinds), 4097, 4.0, torch.bfloat16, seed=7)
    syncing = {"_local_scalar_dense", "nonzero", "item", "is_nonzero"}
    seen: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            seen.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    with Watch():
        finish = sampler.sample_async(x, seqs)
    assert not syncing & set(seen), sorted(syncing & set(seen))
    got = finish()
    import os

    os.environ["TRITON_INTERPRET"] = "0"  # read at each call: the PyTorch paths, as on a CPU engine
    try:
        ref = sampler.sample(x, seqs)
    finally:
        os.environ["TRITON_INTERPRET"] = "1"
    assert [t.token_id for t in got] == [t.token_id for t in ref]
    for a, b in zip(got, ref, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-4
        assert (a.entropy != a.entropy and b.entropy != b.entropy) or abs(a.entropy - b.entropy) < 1e-3
        assert a.top_logprobs == b.top_logprobs or [i for i, _ in a.top_logprobs or []] == [
            i for i, _ in b.top_logprobs or []]
