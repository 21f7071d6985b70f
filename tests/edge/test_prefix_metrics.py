"""The edge exports its engine's prefix cache on /metrics."""

from isthmus.edge.config import EdgeConfig
from isthmus.edge.metrics import Metrics
from isthmus.engine.core.outputs import EngineLoad


def test_prefix_cache_gauges_render():
    load = EngineLoad(
        num_running=1, num_waiting=0, num_free_kv_blocks=10, num_total_kv_blocks=16, tokens_per_s=0.0,
        num_prefix_queried_tokens=200, num_prefix_hit_tokens=150, num_cached_kv_blocks=9,
        num_prefix_evictions=3,
    )
    assert load.prefix_cache_hit_rate == 0.75
    m = Metrics()
    m.set_prefix_cache(load.prefix_cache_hit_rate, load.num_cached_kv_blocks, load.num_prefix_evictions)
    text = m.render().decode()
    assert "isthmus_edge_prefix_cache_hit_ratio 0.75" in text
    assert "isthmus_edge_prefix_cache_blocks 9.0" in text
    assert "isthmus_edge_prefix_cache_evictions 3.0" in text


def test_hit_rate_is_zero_before_any_request():
    load = EngineLoad(
        num_running=0, num_waiting=0, num_free_kv_blocks=1, num_total_kv_blocks=1, tokens_per_s=0.0
    )
    assert load.prefix_cache_hit_rate == 0.0


def test_edge_config_turns_prefix_caching_off():
    on = EdgeConfig.from_dict({"model": {"path": "/m"}})
    off = EdgeConfig.from_dict({"model": {"path": "/m"}, "engine": {"enable_prefix_caching": False}})
    assert on.engine_options().enable_prefix_caching
    assert not off.engine_options().enable_prefix_caching
