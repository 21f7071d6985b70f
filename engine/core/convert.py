"""Wire sampling options (protocol) to engine sampling parameters."""

from __future__ import annotations

from isthmus.engine.core.params import SamplingParams
from isthmus.protocol import SamplingOptions, unpack_ids


def params_from_options(opts: SamplingOptions, *, entropy: bool = True) -> SamplingParams:
    """Translate a validated `SamplingOptions`; raises ValueError on values SamplingParams rejects.

    ``entropy``: compute each token's entropy (only a hand-over monitor reads it; see
    `SamplingParams.entropy`).
    """
    return SamplingParams(
        max_tokens=opts.max_tokens,
        temperature=opts.temperature,
        top_p=opts.top_p,
        top_k=opts.top_k,
        min_p=opts.min_p,
        repetition_penalty=opts.repetition_penalty,
        presence_penalty=opts.presence_penalty,
        frequency_penalty=opts.frequency_penalty,
        seed=opts.seed,
        stop=list(opts.stop),
        stop_token_ids=unpack_ids(opts.stop_token_ids) if opts.stop_token_ids else [],
        ignore_eos=opts.ignore_eos,
        logprobs=opts.logprobs,
        entropy=entropy,
    )
