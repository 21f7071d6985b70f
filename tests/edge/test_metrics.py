"""Edge metrics: every series the issue lists, in a private registry, robust to odd input."""

from __future__ import annotations

from isthmus.edge.metrics import Metrics
from isthmus.protocol import ErrorCode
from prometheus_client.parser import text_string_to_metric_families


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.record_tokens(5, 7)
    assert samples(a)[("isthmus_edge_tokens_in_total", ())] == 5
    assert samples(b)[("isthmus_edge_tokens_in_total", ())] == 0


def test_every_series_records() -> None:
    m = Metrics()
    m.observe_ttft(0.2)
    m.observe_itl(0.01)
    m.observe_queue(0.003)
    m.record_tokens(10, 20)
    m.record_route("center", "score_above_threshold")
    m.record_escalation("before")
    m.record_escalation("before_prefill")
    m.record_escalation("mid_answer")
    m.record_escalation("weird")
    m.record_error("UNAVAILABLE")
    m.record_error(int(ErrorCode.RATE_LIMITED))
    m.set_load(num_waiting=3, num_running=2, num_free_kv_blocks=25, num_total_kv_blocks=100)
    m.set_replica_health("10.0.0.1:50051", True)
    m.set_replica_health("10.0.0.2:50051", False)
    s = samples(m)
    assert s[("isthmus_edge_ttft_seconds_count", ())] == 1
    assert s[("isthmus_edge_inter_token_seconds_count", ())] == 1
    assert s[("isthmus_edge_queue_seconds_count", ())] == 1
    assert s[("isthmus_edge_tokens_out_total", ())] == 20
    assert s[("isthmus_edge_requests_total", (("reason", "score_above_threshold"), ("tier", "center")))] == 1
    assert s[("isthmus_edge_escalations_total", (("when", "before"),))] == 2
    assert s[("isthmus_edge_escalations_total", (("when", "mid_answer"),))] == 1
    assert s[("isthmus_edge_escalations_total", (("when", "after_prefill"),))] == 0
    assert s[("isthmus_edge_escalations_total", (("when", "other"),))] == 1
    assert s[("isthmus_edge_errors_total", (("code", "UNAVAILABLE"),))] == 1
    assert s[("isthmus_edge_errors_total", (("code", "RATE_LIMITED"),))] == 1
    assert s[("isthmus_edge_queue_depth", ())] == 3
    assert s[("isthmus_edge_kv_usage_ratio", ())] == 0.75
    assert s[("isthmus_edge_center_replica_healthy", (("endpoint", "10.0.0.2:50051"),))] == 0


def test_odd_input_is_ignored_not_raised() -> None:
    m = Metrics()
    m.observe_ttft(float("nan"))
    m.observe_itl(-1.0)
    m.record_tokens(-3, 0)
    m.set_load(-1, -1, 5, 0)
    m.record_error(999)
    s = samples(m)
    assert s[("isthmus_edge_ttft_seconds_count", ())] == 0
    assert s[("isthmus_edge_tokens_in_total", ())] == 0
    assert s[("isthmus_edge_errors_total", (("code", "999"),))] == 1
