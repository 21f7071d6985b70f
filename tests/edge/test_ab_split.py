"""AbSplit (sans-IO): deterministic, sticky, proportional, monotone in the percentage."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from isthmus.edge.ab_split import CANDIDATE, STABLE, AbSplit


def req(id: str, api_key: str | None = None, user: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(id=id, api_key=api_key, user=user)


def test_stickiness_holds_across_1000_requests_per_user_and_per_key() -> None:
    split = AbSplit(percent=50, salt="s")
    for who in range(20):
        by_user = {split.choose(req(f"r{i}", api_key=f"k{i % 7}", user=f"user{who}")) for i in range(1000)}
        by_key = {split.choose(req(f"r{i}", api_key=f"key{who}")) for i in range(1000)}
        assert len(by_user) == 1 and len(by_key) == 1


def test_a_fresh_split_with_the_same_salt_gives_the_same_variants() -> None:
    ids = [f"user{i}" for i in range(1000)]
    first = [AbSplit(percent=30, salt="x").variant(i) for i in ids]
    assert first == [AbSplit(percent=30, salt="x").variant(i) for i in ids]
    assert first != [AbSplit(percent=30, salt="y").variant(i) for i in ids]  # the salt reshuffles


@pytest.mark.parametrize("percent", [0, 5, 25, 50, 100])
def test_the_share_of_ids_on_the_candidate_follows_the_percentage(percent: float) -> None:
    split = AbSplit(percent=percent, salt="share")
    num = sum(split.variant(f"id{i}") == CANDIDATE for i in range(10_000))
    assert abs(num / 100 - percent) <= 1.5  # per cent of 10,000 ids, within 1.5 points


def test_raising_the_percentage_only_moves_ids_from_stable_to_candidate() -> None:
    ids = [f"id{i}" for i in range(2000)]
    steps = [AbSplit(percent=p, salt="m") for p in (5, 25, 50, 100)]
    for low, high in itertools.pairwise(steps):
        for i in ids:
            assert not (low.variant(i) == CANDIDATE and high.variant(i) == STABLE)


def test_sticky_by_key_ignores_the_user_id_and_anonymous_requests_use_their_id() -> None:
    split = AbSplit(percent=50, sticky="key")
    assert split.sticky_id(req("r1", api_key="k", user="u")) == "k:k"
    assert AbSplit().sticky_id(req("r1", api_key="k", user="u")) == "u:u"
    assert AbSplit().sticky_id(req("r1")) == "r:r1"


@pytest.mark.parametrize(
    "kwargs", [{"percent": -1}, {"percent": 101}, {"percent": float("nan")}, {"sticky": "ip"}]
)
def test_bad_settings_are_refused_by_field(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AbSplit(**kwargs)  # type: ignore[arg-type]
