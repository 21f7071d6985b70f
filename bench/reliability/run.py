"""Run the reliability suite (tests/soak) and print its figures as one table.

    .venv/bin/python bench/reliability/run.py            # short variants (what CI runs, ~4 min)
    .venv/bin/python bench/reliability/run.py --long     # 10-minute soak, 1M frames, 50k over QUIC
    .venv/bin/python bench/reliability/run.py --long -k soak   # one part (a pytest -k expression)
    .venv/bin/python bench/reliability/run.py --report   # only print the last results
    .venv/bin/python bench/reliability/run.py --long --pin -k flood   # attackers on their own core

Each test writes its figures as JSON under bench/reliability/results/ (`<test>[-long].json`);
this script runs pytest with ISTHMUS_SOAK_LONG set as asked and prints those files' main figures.
Loopback only; every server it starts is a child process killed at the end of its test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("ISTHMUS_SOAK_RESULTS", REPO / "bench" / "reliability" / "results"))


def run_suite(long: bool, select: str | None, pin: bool = False) -> int:
    env = dict(os.environ, ISTHMUS_SOAK_LONG="1" if long else "0", ISTHMUS_SOAK_RESULTS=str(RESULTS))
    env["ISTHMUS_FLOOD_PIN"] = "1" if pin else "0"
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/soak"]
    if select:
        cmd += ["-k", select]
    return subprocess.call(cmd, cwd=REPO, env=env)


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _line(name: str, r: dict[str, Any]) -> str:
    if "concurrency" in r:  # the soak
        return (
            f"{name}: {r['requests']} requests, {r['outcomes']}, ttft p50 {r['ttft_p50_ms']} ms / p99 "
            f"{r['ttft_p99_ms']} ms, edge RSS {r['edge_rss_start_mb']} -> {r['edge_rss_end_mb']} MB"
        )
    if "during" in r:  # a fault drill
        d, a = r["during"], r["after"]
        return f"{name}: during {d['requests']} {d['outcomes']}; after {a['requests']} {a['outcomes']}"
    if "legit_during" in r and "error" in r["attackers"]:
        return f"{name}: the flood itself failed: {r['attackers']['error']}"
    if "legit_during" in r:  # a flood
        return (
            f"{name}: legit ttft p99 {r['legit_unloaded']['ttft_p99_ms']} -> "
            f"{r['legit_during']['ttft_p99_ms']} ms (x{r['ttft_p99_ratio']}), legit "
            f"{r['legit_during']['outcomes']}, attackers {r['attackers']['codes']}, "
            f"edge RSS {r['edge_rss_mb']}"
        )
    if "outcomes" in r:  # in-process fuzz
        return f"{name}: {r['frames']} frames in {r['wall_s']} s, {r['outcomes']}"
    codes, no_answer = r.get("codes"), r.get("no_answer")
    return f"{name}: {r.get('frames')} frames in {r.get('wall_s')} s, {codes}, no answer {no_answer}"


def report(long: bool) -> None:
    suffix = "-long.json" if long else ".json"
    files = sorted(p for p in RESULTS.glob(f"*{suffix}") if long or not p.name.endswith("-long.json"))
    if not files:
        print(f"no results under {RESULTS}")
    for path in files:
        r = _load(path)
        print(f"[{r.get('at')}, {r.get('cpus')} cpus] " + _line(path.name.removesuffix(suffix), r))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--long", action="store_true", help="the long variants (ISTHMUS_SOAK_LONG=1)")
    p.add_argument("-k", dest="select", help="pytest -k expression: run part of the suite")
    p.add_argument("--report", action="store_true", help="print the last results without running")
    p.add_argument(
        "--pin", action="store_true", help="floods: attackers on core 0, edge + legit client on core 1"
    )
    a = p.parse_args(argv)
    rc = 0 if a.report else run_suite(a.long, a.select, a.pin)
    report(a.long)
    return rc


if __name__ == "__main__":
    sys.exit(main())
