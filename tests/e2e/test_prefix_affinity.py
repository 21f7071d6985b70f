"""Two real center replicas behind one `CenterPool`: the cache-aware policy vs least-loaded.

Runs bench/prefix_replicas.py's workload, small (4 conversations x 3 turns, 200-token system
prompt, 2 in flight, each policy three times), over real gRPC on loopback with tiny in-process
centers; the hit rates are the replicas' own, read from their `Status`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def _load_bench() -> ModuleType:
    path = Path(__file__).parents[2] / "bench" / "prefix_replicas.py"
    spec = importlib.util.spec_from_file_location("prefix_replicas", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


async def test_replicas_report_their_own_hit_rates_under_both_policies(tmp_path: Path) -> None:
    """What holds on every run, whatever the timing: every request is served, and each replica's
    `Status` hit rate equals its engine's own count."""
    bench = _load_bench()
    model = str(bench.tiny_model(tmp_path))
    args = argparse.Namespace(
        conversations=4, turns=3, system=200, max_tokens=8, concurrency=2, num_kv_blocks=256, seed=0
    )
    for policy in bench.POLICIES:
        run = await bench.run_policy(model, policy, args)
        assert sum(run["requests"]) == 4 * 3
        assert 0.0 < run["hit_rate"] < 1.0
        assert run["hit_rate"] == pytest.approx(run["engine_hit_rate"], abs=1e-6)


@pytest.mark.skipif(
    not os.environ.get("ISTHMUS_TIMING_TESTS"),
    reason="compares policies whose outcome depends on timing: set ISTHMUS_TIMING_TESTS=1",
)
async def test_cache_aware_choice_hits_at_least_as_often_without_starving_a_replica(tmp_path: Path) -> None:
    # Kept out of CI: which replica looks idler when a turn is routed depends on timing, so a
    # rare run order can flip the comparison on a loaded machine; the figures are in
    # docs/prefix-caching.md (bench/prefix_replicas.py --repeats 5).
    bench = _load_bench()
    model = str(bench.tiny_model(tmp_path))
    args = argparse.Namespace(
        conversations=4, turns=3, system=200, max_tokens=8, concurrency=2, num_kv_blocks=256, seed=0
    )
    # one run of either policy varies with timing (which replica looks idler when a turn is
    # routed): single least-loaded runs ranged 64.6-72.6% and cache-aware ones 71.2-72.6%, so the
    # means of three alternating runs are compared
    runs: dict[str, list[dict[str, Any]]] = {"cache-aware": [], "least-loaded": []}
    for i in range(3):  # the order alternates, so neither policy always runs first
        for policy in bench.POLICIES if i % 2 == 0 else bench.POLICIES[::-1]:
            runs[policy].append(await bench.run_policy(model, policy, args))
    for run in [*runs["cache-aware"], *runs["least-loaded"]]:
        assert sum(run["requests"]) == 4 * 3
        assert all(n > 0 for n in run["requests"]), run  # neither replica starved
        assert 0.0 < run["hit_rate"] < 1.0
        assert run["hit_rate"] == pytest.approx(run["engine_hit_rate"], abs=1e-6)  # Status agrees
    aware = statistics.fmean(r["hit_rate"] for r in runs["cache-aware"])
    least = statistics.fmean(r["hit_rate"] for r in runs["least-loaded"])
    assert aware >= least, runs


async def test_unknown_policy_is_a_clear_error(tmp_path: Path) -> None:
    bench = _load_bench()
    args = argparse.Namespace(num_kv_blocks=16)
    with pytest.raises(ValueError, match="policy must be one of"):
        await bench.run_policy(str(tmp_path), "round-robin", args)
