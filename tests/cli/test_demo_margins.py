"""The margins the demo's routing relies on, measured on the trained default edge model (nf4, greedy).

The demo shows one mid-answer hand-over: `HANDOVER_PROMPT` (a question from outside the docs) must
start with a mean entropy above the confidence threshold, and every other prompt the router keeps
at the edge must stay below it, each by `MARGIN_NATS`. Those edge prompts must also look familiar
to the edge model (prompt NLL under `PERPLEXITY_LOW_NATS`), so the after-prefill reconsideration
keeps them at the edge, and the router must send the code task and the proof to the center.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from isthmus.cli.defaults import CONFIDENCE, PERPLEXITY_LOW_NATS
from isthmus.cli.demo import FREQUENCY_PENALTY, HANDOVER_PROMPT, PRESENCE_PENALTY, PROMPTS
from isthmus.cli.signals import Signals, measure
from isthmus.models import EDGE_DEFAULT

MARGIN_NATS = 0.5  # entropy (nats) between the threshold and every demo prompt's window mean
NLL_MARGIN_NATS = 0.5  # prompt NLL (nats/token) below PERPLEXITY_LOW_NATS for the edge prompts


def _route(text: str) -> str:
    """The tier the demo network's router picks before prefill (its threshold, idle tiers)."""
    from isthmus.cli.network import NetworkSettings
    from isthmus.edge.router import RouterConfig, route_prompt

    config = replace(RouterConfig(), threshold=NetworkSettings.router_threshold)
    return route_prompt(text, config=config).tier


def _edge_prompts() -> list[str]:
    return [p.text for p in PROMPTS if p.tier == "auto" and _route(p.text) == "edge"]


@pytest.fixture(scope="module")
def signals() -> dict[str, Signals]:
    max_checked = CONFIDENCE[2]
    found = measure(
        EDGE_DEFAULT,
        _edge_prompts(),
        quantization="nf4",
        max_tokens=max_checked,
        presence_penalty=PRESENCE_PENALTY,
        frequency_penalty=FREQUENCY_PENALTY,
    )
    return {s.prompt: s for s in found}


def test_the_router_shows_both_tiers_and_a_wish() -> None:
    auto = [p.text for p in PROMPTS if p.tier == "auto"]
    tiers = {text: _route(text) for text in auto}
    assert "center" in tiers.values() and list(tiers.values()).count("edge") >= 3, tiers
    assert tiers[HANDOVER_PROMPT] == "edge"
    assert any(p.tier == "center" for p in PROMPTS)


def test_only_the_hand_over_prompt_loses_confidence(signals: dict[str, Signals]) -> None:
    window, threshold, max_checked = CONFIDENCE
    means = {p: s.window_mean(window, max_checked) for p, s in signals.items()}
    assert means[HANDOVER_PROMPT] > threshold + MARGIN_NATS, means
    others = {p: m for p, m in means.items() if p != HANDOVER_PROMPT}
    assert others and all(m < threshold - MARGIN_NATS for m in others.values()), means


def test_edge_prompts_look_familiar_to_the_edge_model(signals: dict[str, Signals]) -> None:
    nlls = {p: s.prompt_nll for p, s in signals.items()}
    assert all(nll < PERPLEXITY_LOW_NATS - NLL_MARGIN_NATS for nll in nlls.values()), nlls
