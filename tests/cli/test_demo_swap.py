"""`python -m isthmus.cli.demo_swap` (scripts/demo-swap): two in-process center replicas and an
edge on 127.0.0.1, a live swap from A to B while answers stream. Bounded: 3 answers of 40 tokens."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from isthmus.cli.demo_swap import main, run_demo_swap

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


async def test_demo_swap_moves_every_answer_and_says_so(tmp_path: Path) -> None:
    out = io.StringIO()
    # A's steps slowed 80 ms: 40 tokens take >= 3.2 s, so the swap's set-up (B added, awaited
    # healthy, two weight steps) ends well before the answers are half done, even on a busy host
    assert await run_demo_swap(out, num_streams=3, max_tokens=40, slow_s=0.08, work=tmp_path) == 0
    text = out.getvalue()
    assert "requests moved A -> B mid-answer: 3 of 3 in flight on A at the drain" in text
    assert "answers complete: 3/3; identical to the run without a swap: 3/3" in text
    assert "longest stall between two tokens on any answer:" in text
    assert "the swap went through: no answer broke" in text


@pytest.mark.parametrize("args", [["--streams", "0"], ["--max-tokens", "4"], ["--slow-ms", "-1"]])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
