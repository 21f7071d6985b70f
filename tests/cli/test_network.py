"""`isthmus demo` and `isthmus up` + `isthmus chat` as real subprocesses (TP=2 center over gloo).

Both share one cache folder; the default checkpoints are the trained ones shipped in `models/`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ISTHMUS = [sys.executable, "-m", "isthmus.cli.main"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("isthmus-cache")


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_demo_shows_both_tiers_and_a_hand_over(cache_dir: Path) -> None:
    proc = subprocess.run(
        [*ISTHMUS, "demo", "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=150,
        errors="replace",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "trained" in out and "--edge-model" in out
    table = out[out.index("prompt  ") :]
    rows = [line.split() for line in table.splitlines()[2:] if line.strip() and "prompts:" not in line]
    tiers = {row[-5] for row in rows}
    assert {"edge", "center", "edge->center"} <= tiers, table
    assert "score_above_threshold" in table and "wish_center" in table and "confidence_collapse" in table
    assert sum(row[-1] == "yes" for row in rows) == 1, table
    assert "1 handed over mid-answer" in out


def test_up_then_chat_then_ctrl_c(cache_dir: Path) -> None:
    state = cache_dir / "up.json"
    state.unlink(missing_ok=True)
    children: set[int] = set()
    up = subprocess.Popen(
        [
            *ISTHMUS,
            "up",
            "--cache-dir",
            str(cache_dir),
            "--port",
            "0",
            "--http-port",
            "0",
            "--center-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    try:
        deadline = time.monotonic() + 120
        while not state.exists():
            assert up.poll() is None, up.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "isthmus up wrote no state file"
            time.sleep(0.2)
        info = json.loads(state.read_text())
        assert info["pid"] == up.pid and Path(info["ca"]).is_file()
        children = _descendants(up.pid)
        assert children, "the center runs as child processes"
        chat = subprocess.run(
            [
                *ISTHMUS,
                "chat",
                "What does the assert statement do?",  # the trained default edge model answers it
                "--cache-dir",
                str(cache_dir),
                "--max-tokens",
                "5",
                "--temperature",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            errors="replace",
        )
        assert chat.returncode == 0, chat.stderr
        assert "tier=edge" in chat.stdout and "tokens=" in chat.stdout and "ttft=" in chat.stdout
        center = subprocess.run(
            [*ISTHMUS, "chat", "Hi", "--tier", "center", "--cache-dir", str(cache_dir), "--max-tokens", "3"],
            capture_output=True,
            text=True,
            timeout=60,
            errors="replace",
        )
        assert center.returncode == 0 and "tier=center reason=wish_center" in center.stdout, center.stderr
        interactive = subprocess.run(
            [*ISTHMUS, "chat", "--cache-dir", str(cache_dir), "--max-tokens", "3", "--tier", "edge"],
            input="Hi there!\nAnd again\n\n",
            capture_output=True,
            text=True,
            timeout=60,
            errors="replace",
        )
        assert interactive.returncode == 0, interactive.stderr
        assert interactive.stdout.count("[tier=edge reason=wish_edge") == 2
        assert "tokens=" in interactive.stdout
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
        assert up.returncode == 0, out[-3000:]
        assert "isthmus is up" in out and "isthmus chat" in out and "stopped" in out
        assert not state.exists()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "orphaned child processes"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in children:
            if _alive(pid):  # a failed run must not leave its center behind
                os.kill(pid, signal.SIGKILL)
