"""`isthmus rollout` argument parsing and exits without an edge (edge side: tests/edge/test_ab_node.py)."""

from __future__ import annotations

import argparse

import pytest
from isthmus.cli.main import main as isthmus_main
from isthmus.cli.network import free_port
from isthmus.cli.rollout import describe, main, parse_duration, parse_rate, parse_steps


def test_durations_rates_and_steps_parse() -> None:
    assert [parse_duration(t) for t in ("60s", "2m", "500ms", "1.5h", "30")] == [60, 120, 0.5, 5400, 30]
    assert parse_rate("1%") == 0.01 and parse_rate("0.2") == 0.2
    assert parse_steps("5,25,50,100") == [5, 25, 50, 100]
    for bad in (lambda: parse_duration("soon"), lambda: parse_rate("150%"), lambda: parse_steps("a,b")):
        with pytest.raises(argparse.ArgumentTypeError):
            bad()


def test_missing_token_and_bad_arguments_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISTHMUS_ADMIN_TOKEN", raising=False)
    assert main(["status"]) == 2
    monkeypatch.setenv("ISTHMUS_ADMIN_TOKEN", "t")
    assert main(["start", "--candidate", "other"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["start", "--interval", "soon"])
    assert info.value.code == 2


def test_an_unreachable_edge_exits_1_through_the_isthmus_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTHMUS_ADMIN_TOKEN", "t")
    edge = f"http://127.0.0.1:{free_port()}"
    assert isthmus_main(["rollout", "--edge", edge, "--timeout", "2", "status"]) == 1


def test_describe_says_status_share_and_reason() -> None:
    text = describe(
        {
            "status": "rolled_back",
            "percent": 0.0,
            "step": 1,
            "plan": {"steps": [5, 25]},
            "num_requests": 40,
            "error_rate": 0.2,
            "ttft_p95_s": None,
            "reason": "error rate 20.0% > 1.0%",
        }
    )
    assert "rolled_back" in text and "step 2/2" in text and "error rate 20.0%" in text
