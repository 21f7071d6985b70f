"""The router's decisions: wishes, threshold, load, perplexity, hand-over; pure objects only.

Arithmetic on scores is checked with the rule-based baseline (`model = "heuristic"`), whose score
is a known weighted sum; the trained model's own behaviour is in test_router_model.py.
"""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from isthmus.edge.features import extract_features
from isthmus.edge.router import (
    CENTER_UNAVAILABLE,
    CONFIDENCE_COLLAPSE,
    EDGE_OVERLOADED,
    PROMPT_PERPLEXITY,
    SCORE_ABOVE_THRESHOLD,
    SCORE_BELOW_THRESHOLD,
    WISH_CENTER,
    WISH_EDGE,
    FeatureWeights,
    LoadView,
    Router,
    RouterConfig,
)
from isthmus.protocol import Done, Route, validate

EASY = extract_features("Hi! What's the capital of France?", 10, 32, 1)
HARD = extract_features(
    "Prove step by step that the integral of x^2 from 0 to 1 equals 1/3. First state the theorem, "
    "then compute it, finally check it in python. You must use exactly 3 steps and at most 100 words.",
    60,
    1024,
    3,
)
HEALTHY = LoadView(is_center_healthy=True)
NO_CENTER = LoadView(is_center_healthy=False)
HEURISTIC = RouterConfig(model="heuristic")


def test_default_weights_sum_to_one() -> None:
    w = FeatureWeights()
    total = w.length + w.code + w.math + w.steps + w.constraints + w.output_length + w.depth
    assert math.isclose(total, 1.0)


@pytest.mark.parametrize("config", [RouterConfig(), HEURISTIC], ids=["trained", "heuristic"])
def test_easy_stays_hard_escalates(config: RouterConfig) -> None:
    router = Router(config)
    easy = router.decide(EASY, "auto", HEALTHY)
    hard = router.decide(HARD, "auto", HEALTHY)
    assert (easy.tier, easy.reason) == ("edge", SCORE_BELOW_THRESHOLD)
    assert (hard.tier, hard.reason) == ("center", SCORE_ABOVE_THRESHOLD)
    assert easy.score < hard.score


def test_hard_without_center_is_degraded() -> None:
    d = Router().decide(HARD, "auto", NO_CENTER)
    assert (d.tier, d.reason, d.is_degraded) == ("edge", CENTER_UNAVAILABLE, True)


def test_wishes_are_honoured() -> None:
    router = Router()
    assert router.decide(HARD, "edge", HEALTHY).reason == WISH_EDGE
    assert router.decide(HARD, "edge", HEALTHY).tier == "edge"
    d = router.decide(EASY, "center", HEALTHY)
    assert (d.tier, d.reason) == ("center", WISH_CENTER)
    d = router.decide(EASY, "center", NO_CENTER)
    assert (d.tier, d.reason, d.is_degraded) == ("edge", CENTER_UNAVAILABLE, True)


def test_edge_overloaded_escalates_when_center_healthy() -> None:
    router = Router(RouterConfig(max_edge_queue=4))
    busy = LoadView(edge_num_waiting=4, is_center_healthy=True)
    d = router.decide(EASY, "auto", busy)
    assert (d.tier, d.reason) == ("center", EDGE_OVERLOADED)
    d = router.decide(EASY, "auto", LoadView(edge_num_waiting=4, is_center_healthy=False))
    assert d.tier == "edge"


def test_threshold_trades_quality_for_cost() -> None:
    assert Router(RouterConfig(threshold=0.0)).decide(EASY, "auto", HEALTHY).tier == "center"
    assert Router(RouterConfig(threshold=1.01)).decide(HARD, "auto", HEALTHY).tier == "edge"


def test_default_threshold_is_the_models() -> None:
    router = Router()
    assert router.model is not None
    assert router.base_threshold == router.model.threshold
    assert router.decide(EASY, "auto", HEALTHY).threshold == router.model.threshold
    assert Router(HEURISTIC).base_threshold == 0.35
    assert Router(RouterConfig(threshold=0.7)).base_threshold == 0.7


def test_load_moves_the_threshold() -> None:
    router = Router(
        RouterConfig(
            model="heuristic", threshold=0.5, center_load_weight=0.2, edge_load_weight=0.2, max_edge_queue=10
        )
    )
    assert router.effective_threshold(HEALTHY) == 0.5
    assert math.isclose(router.effective_threshold(LoadView(is_center_healthy=True, center_load=1.0)), 0.7)
    assert math.isclose(router.effective_threshold(LoadView(edge_num_waiting=5)), 0.4)
    assert router.effective_threshold(LoadView(center_load=float("nan"))) == pytest.approx(0.7)
    # a prompt just over the base threshold stays at the edge when the center is saturated
    feats = extract_features("x", 1024, 2048, 1)  # length 0.5*0.15 + output 1.0*0.10 = 0.175
    r = Router(RouterConfig(model="heuristic", threshold=0.15, center_load_weight=0.1))
    assert r.decide(feats, "auto", HEALTHY).tier == "center"
    assert r.decide(feats, "auto", LoadView(is_center_healthy=True, center_load=1.0)).tier == "edge"


def test_reconsider_escalates_on_high_perplexity() -> None:
    router = Router()
    d = router.decide(EASY, "auto", HEALTHY)
    assert router.reconsider(d, -1.0) is None  # the edge model finds the prompt easy
    assert router.reconsider(d, None) is None
    assert router.reconsider(d, float("nan")) is None
    again = router.reconsider(d, -9.0)
    assert again is not None
    assert (again.tier, again.reason) == ("center", PROMPT_PERPLEXITY)
    assert again.score > d.score
    assert router.reconsider(d, -9.0, NO_CENTER) is None


def test_reconsider_leaves_pinned_and_degraded_alone() -> None:
    router = Router()
    assert router.reconsider(router.decide(EASY, "edge", HEALTHY), -20.0) is None
    assert router.reconsider(router.decide(HARD, "auto", NO_CENTER), -20.0) is None
    assert router.reconsider(router.decide(HARD, "auto", HEALTHY), -20.0) is None


def test_perplexity_term_is_bounded() -> None:
    router = Router()
    assert router.perplexity_term(0.0) == 0.0
    assert router.perplexity_term(-1000.0) == router.config.weights.perplexity


def test_handover_and_route() -> None:
    router = Router()
    d = router.handover(router.decide(EASY, "auto", HEALTHY))
    assert (d.tier, d.reason) == ("center", CONFIDENCE_COLLAPSE)
    route = d.route()
    assert isinstance(route, Route) and route.tier == "center" and route.score == d.score
    validate(Done(id="r", finish_reason="stop", route=route))


def test_bad_config_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^threshold:"):
        RouterConfig(threshold=-1)
    with pytest.raises(ValueError, match=r"^math:"):
        FeatureWeights(math=float("inf"))
    with pytest.raises(ValueError, match="perplexity_high_nats"):
        RouterConfig(perplexity_low_nats=5.0, perplexity_high_nats=4.0)
    with pytest.raises(ValueError, match="max_edge_queue"):
        RouterConfig(max_edge_queue=0)
    with pytest.raises(ValueError, match=r"^model:"):
        RouterConfig(model=3)  # type: ignore[arg-type]


@given(
    st.text(max_size=300),
    st.integers(0, 10**5),
    st.integers(0, 10**5),
    st.integers(1, 100),
    st.sampled_from(["auto", "edge", "center"]),
    st.integers(0, 1000),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_every_decision_is_well_formed(
    text: str, n: int, m: int, turns: int, wish: str, waiting: int, healthy: bool, center_load: float
) -> None:
    router = Router()
    d = router.decide(
        extract_features(text, n, m, turns),
        wish,
        LoadView(edge_num_waiting=waiting, is_center_healthy=healthy, center_load=center_load),
    )
    assert 0.0 <= d.score <= 1.0
    assert d.tier in ("edge", "center") and d.reason
    assert d.tier == "edge" or healthy  # never sent to a center that is not there
    assert math.isfinite(d.threshold) and d.threshold >= 0


def test_decision_explains_itself_when_asked() -> None:
    router = Router()
    assert router.decide(HARD, "auto", HEALTHY).top_features == ()
    d = router.decide(HARD, "auto", HEALTHY, explain=True)
    assert 1 <= len(d.top_features) <= 6
    names = [name for name, _ in d.top_features]
    assert all(isinstance(n, str) and n for n in names)
    magnitudes = [abs(c) for _, c in d.top_features]
    assert magnitudes == sorted(magnitudes, reverse=True)
    h = Router(HEURISTIC).decide(HARD, "auto", HEALTHY, explain=True)
    assert {n for n, _ in h.top_features} <= set(FeatureWeights.__dataclass_fields__)


def test_debug_log_names_the_top_features(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="isthmus.edge.router"):
        d = Router().decide(HARD, "auto", HEALTHY)
    assert d.top_features
    assert any("top features" in r.getMessage() for r in caplog.records)


def test_load_view_from_parts() -> None:
    class EngineLoad:
        num_waiting = 3
        num_running = 2

    view = LoadView.from_parts(EngineLoad(), LoadView(is_center_healthy=True, center_load=0.5))
    assert view == LoadView(edge_num_waiting=3, edge_num_running=2, is_center_healthy=True, center_load=0.5)
    assert LoadView.from_parts(None, None) == LoadView()
