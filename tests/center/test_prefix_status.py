"""A center replica reports its prefix cache in `Status` (hit rate, cached blocks, evictions)."""

from __future__ import annotations

from isthmus.protocol import GenerateRequest, SamplingOptions, Status, StatusRequest, pack_ids, rpc

from tests.center.conftest import Center

GREEDY = SamplingOptions(max_tokens=4, temperature=0.0, ignore_eos=True)


async def test_status_reports_the_prefix_cache(center: Center) -> None:
    status = await center.unary(rpc.STATUS, StatusRequest())
    assert isinstance(status, Status)
    assert status.prefix_cache_hit_rate == 0.0 and status.num_cached_kv_blocks == 0
    prompt = pack_ids(list(range(3, 3 + 40)))
    for i in range(2):  # the same prompt twice: the second reuses every full block but the last
        await center.generate(GenerateRequest(id=f"p{i}", prompt_ids=prompt, sampling=GREEDY))
    status = await center.unary(rpc.STATUS, StatusRequest())
    assert isinstance(status, Status)
    assert status.num_cached_kv_blocks > 0
    assert 0.3 < status.prefix_cache_hit_rate < 0.5  # (40 - 1) // block * block reused of 80 queried
    assert status.num_prefix_evictions == 0


def test_center_flag_turns_prefix_caching_off(tp_llama) -> None:
    from isthmus.center.main import engine_options, parse_args

    assert engine_options(parse_args(["--model", str(tp_llama)])).enable_prefix_caching
    off = parse_args(["--model", str(tp_llama), "--no-prefix-caching"])
    assert not engine_options(off).enable_prefix_caching
