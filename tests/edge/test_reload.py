"""plan_reload (sans-IO): which config changes apply live, which are refused, summaries without secrets."""

from __future__ import annotations

import dataclasses

import pytest
from isthmus.edge.auth import ApiKey, hash_key
from isthmus.edge.config import EdgeConfig
from isthmus.edge.reload import ReloadRefused, is_live, plan_reload


def config(**sections: dict[str, object]) -> EdgeConfig:
    return EdgeConfig.from_dict({"model": {"path": "/m"}, **sections})


def test_identical_configs_plan_no_change() -> None:
    assert plan_reload(config(), config()) == []


def test_threshold_keys_pool_and_log_level_are_live_changes() -> None:
    old = config(center={"endpoints": ["a:1"]})
    new = config(
        router={"threshold": 0.7},
        auth={"keys": [{"sha256": hash_key("s3cret"), "name": "alice", "max_concurrent": 2}]},
        center={"endpoints": ["a:1", "b:2"], "weights": [1.0, 3.0]},
        log={"level": "DEBUG"},
    )
    changes = {c.field: c for c in plan_reload(old, new)}
    assert set(changes) == {
        "router.threshold",
        "auth.keys",
        "center.endpoints",
        "center.weights",
        "log.level",
    }
    assert changes["router.threshold"].new == "0.7"
    assert changes["auth.keys"].new == "alice(max_concurrent=2)"


@pytest.mark.parametrize(
    ("section", "value", "field"),
    [
        ("listen", {"port": 5555}, "listen.port"),
        ("listen", {"cert": "/other.crt"}, "listen.cert"),
        ("http", {"port": 8000}, "http.port"),
        ("model", {"path": "/other"}, "model.path"),
        ("center", {"tls": True}, "center.tls"),
        ("engine", {"max_num_seqs": 3}, "engine.max_num_seqs"),
    ],
)
def test_fields_that_cannot_change_live_are_refused_by_name(
    section: str, value: dict[str, object], field: str
) -> None:
    new = config(**{section: {"path": "/m", **value} if section == "model" else value})
    with pytest.raises(ReloadRefused) as info:
        plan_reload(config(), new)
    assert [e.split(":")[0] for e in info.value.errors] == [field]


def test_a_mix_of_live_and_restart_fields_is_refused_whole() -> None:
    new = config(router={"threshold": 0.5}, listen={"port": 1}, http={"port": 2})
    with pytest.raises(ReloadRefused) as info:
        plan_reload(config(), new)
    assert sorted(e.split(":")[0] for e in info.value.errors) == ["http.port", "listen.port"]


def test_summaries_never_show_key_digests_or_admin_token() -> None:
    digest = hash_key("top-secret")
    old = config()
    new = dataclasses.replace(
        config(admin={"token_sha256": digest}),
        auth=dataclasses.replace(old.auth, keys=[ApiKey(sha256=digest, name="bob")]),
    )
    text = repr([c.as_dict() for c in plan_reload(old, new)])
    assert digest not in text and "top-secret" not in text
    assert "bob" in text and "[set]" in text


def test_source_path_alone_is_not_a_change() -> None:
    assert plan_reload(config(), dataclasses.replace(config(), source="/etc/edge.toml")) == []


def test_is_live_matches_whole_segments_only() -> None:
    assert is_live("router.threshold") and is_live("auth.keys") and is_live("center.weights")
    assert not is_live("center.tls") and not is_live("routerx") and not is_live("listen.port")
