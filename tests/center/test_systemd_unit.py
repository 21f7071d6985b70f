"""deploy/isthmus-center.service restarts a failed replica but not a drained one or bad options."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "isthmus-center.service"


def test_unit_restarts_on_failure_only() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Restart"] == "on-failure"  # a drain exits 0: not restarted
    assert service["RestartPreventExitStatus"] == "2"  # bad options: restarting cannot help
    assert service["ExecStart"] == "@REPO@/deploy/launch-center.sh $CENTER_ARGS"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"  # the script drains
    assert float(service["TimeoutStopSec"]) > 30 + 30  # the default grace period and torchrun's margin
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_launch_script_exit_statuses_match_the_unit() -> None:
    script = (REPO / "deploy" / "launch-center.sh").read_text()
    assert re.search(r'^die\(\) \{\n.*\n    exit 2\n\}', script, re.MULTILINE)  # bad options exit 2
    assert "rc == 0 || rc == 2 || STOPPING" in script  # the --restart loop spares the same cases
