"""The canary rollout against fake center replicas on loopback: reaches 100 % on a healthy
candidate, rolls back by itself on one that fails 20 % of requests, and survives a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from isthmus.edge.ab_pools import AbPools
from isthmus.edge.ab_split import AbSplit
from isthmus.edge.audit import AuditLog, FileSink
from isthmus.edge.pool import CenterUnavailable
from isthmus.edge.rollout import RolloutPlan
from isthmus.edge.rollout_driver import RolloutDriver
from isthmus.protocol import Error, ErrorCode, GenerateRequest

from .test_pool import FakeCenter, make

pytestmark = pytest.mark.timeout(90)

PLAN = RolloutPlan(steps=(20, 50, 100), interval_s=30, max_error_rate=0.05, min_requests=8)


class FaultyCenter(FakeCenter):
    """Fails every `every`-th request with a non-retryable INTERNAL error (fault injection)."""

    def __init__(self, name: str, every: int) -> None:
        super().__init__(name)
        self.every, self.num = every, 0

    async def generate(self, req: GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.num += 1
        if self.num % self.every == 0:
            yield Error(id=req.id, code=ErrorCode.INTERNAL, message="injected fault")
            return
        async for msg in super().generate(req, context):
            yield msg


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def traffic(ab: AbPools, round_: int, num: int = 60) -> None:
    for i in range(num):
        req = GenerateRequest(id=f"r{round_}-{i}", prompt="hi", tier="center", user=f"user{i}")
        try:
            _ = [m async for m in ab.generate(req)]
        except CenterUnavailable:
            pass


async def run_rollout(
    tmp_path: Path, candidate_center: FakeCenter
) -> tuple[RolloutDriver, AbPools, list[dict]]:  # type: ignore[type-arg]
    stable_center = FakeCenter("stable")
    stable, candidate = await make(stable_center), await make(candidate_center)
    ab = AbPools(stable, candidate, AbSplit(percent=0, salt="r"))
    audit = AuditLog(FileSink(tmp_path / "audit.log"))
    clock = Clock()
    driver = RolloutDriver(ab, tmp_path / "state.json", audit=audit, clock=clock)
    try:
        driver.start(PLAN)
        for round_ in range(8):
            await traffic(ab, round_)
            clock.now += 31
            driver.tick()
            if driver.rollout.state.status != "running":
                break
    finally:
        await asyncio.gather(stable.close(), candidate.close())
        await asyncio.gather(stable_center.stop(), candidate_center.stop())
    records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    return driver, ab, records


async def test_a_healthy_candidate_reaches_100_percent(tmp_path: Path) -> None:
    driver, ab, records = await run_rollout(tmp_path, FakeCenter("candidate"))
    assert driver.rollout.state.status == "done" and ab.split.percent == 100
    assert [r["action"] for r in records] == ["rollout.start", "rollout.step", "rollout.step", "rollout.done"]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["status"] == "done" and saved["percent"] == 100


async def test_a_candidate_failing_20_percent_rolls_back_by_itself(tmp_path: Path) -> None:
    driver, ab, records = await run_rollout(tmp_path, FaultyCenter("candidate", every=5))
    assert driver.rollout.state.status == "rolled_back" and ab.split.percent == 0
    assert "error rate 20.0% > 5.0%" in driver.rollout.state.reason
    assert records[-1]["action"] == "rollout.rollback" and records[-1]["outcome"] == "failed"
    # an edge restarted on the same state file keeps the candidate at 0 % despite its config
    again = AbPools(object(), object(), AbSplit(percent=30))
    restarted = RolloutDriver(again, tmp_path / "state.json")
    assert restarted.rollout.state.status == "rolled_back" and again.split.percent == 0
