"""`isthmus rollout start|status|pause|resume|abort`: drive an edge's canary rollout.

Talks to the edge's admin API (``POST/GET /admin/rollout`` on its HTTP port, see
`isthmus.edge.admin_api`) with the admin token from ``--token-file`` or ``$ISTHMUS_ADMIN_TOKEN``.

    isthmus rollout start --candidate candidate --steps 5,25,50,100 --interval 60s \\
        --max-error-rate 1% --max-ttft-p95 2s --edge http://127.0.0.1:9090 --token-file admin.token

Exit status: 0 done, 1 refused by the edge or unreachable (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """ "60s", "2m", "500ms", "1.5h" or plain seconds -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f'expected a duration such as "60s", "2m" or "500ms", got {text!r}')
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_rate(text: str) -> float:
    """ "1%" or "0.01" -> 0.01."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a rate such as "1%" or "0.01", got {text!r}') from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a rate between 0% and 100%, got {text!r}")
    return value


def parse_steps(text: str) -> list[float]:
    """ "5,25,50,100" -> [5.0, 25.0, 50.0, 100.0]."""
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected percentages such as "5,25,50,100", got {text!r}'
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isthmus rollout", description="canary rollout of the A/B candidate pool"
    )
    p.add_argument("--edge", default="http://127.0.0.1:9090", help="the edge's HTTP address")
    p.add_argument("--token-file", help="file holding the admin token (default: $ISTHMUS_ADMIN_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the edge")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    start = sub.add_parser("start", help="start moving traffic to the candidate step by step")
    start.add_argument("--candidate", default="candidate", help='the pool to roll out (the [ab] "candidate")')
    start.add_argument("--steps", type=parse_steps, default=[5.0, 25.0, 50.0, 100.0], help="percentages")
    start.add_argument("--interval", type=parse_duration, default=60.0, help="time per step (60s, 2m)")
    start.add_argument("--max-error-rate", type=parse_rate, default=0.01, help="roll back above (1%%)")
    start.add_argument("--max-ttft-p95", type=parse_duration, help="roll back above this first-token p95")
    start.add_argument("--min-requests", type=int, default=20, help="candidate answers a step needs")
    for name, what in (("status", "show"), ("pause", "pause"), ("resume", "resume"), ("abort", "abort")):
        sub.add_parser(
            name, help=f"{what} the rollout" + (" (candidate back to 0 %)" if name == "abort" else "")
        )
    return p


def _token(a: argparse.Namespace) -> str:
    if a.token_file:
        with open(a.token_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("ISTHMUS_ADMIN_TOKEN", "").strip()


def call(edge: str, token: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, dict[str, Any]]:
    """One admin API call: (HTTP status, JSON body). GET when `body` is None."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        edge.rstrip("/") + "/admin/rollout",
        data=data,
        method="POST" if data is not None else "GET",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": {"message": exc.reason}}


def describe(state: dict[str, Any]) -> str:
    """The state in a few human lines."""
    plan = state.get("plan") or {}
    steps = plan.get("steps") or []
    lines = [
        f"status: {state.get('status')}  candidate: {state.get('percent', 0):g} %"
        + (
            f"  step {state.get('step', 0) + 1}/{len(steps)} of {','.join(f'{s:g}' for s in steps)}"
            if steps
            else ""
        ),
        f"this step: {state.get('num_requests', 0)} answers, error rate {state.get('error_rate', 0.0):.1%}"
        + (f", first-token p95 {state['ttft_p95_s']:.3f} s" if state.get("ttft_p95_s") is not None else ""),
    ]
    if state.get("reason"):
        lines.append(f"reason: {state['reason']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        token = _token(a)
    except OSError as exc:
        print(f"isthmus rollout: cannot read --token-file: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not token:
        print("isthmus rollout: no admin token (--token-file or $ISTHMUS_ADMIN_TOKEN)", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] | None = None
    if a.action == "start":
        if a.candidate != "candidate":
            print(
                'isthmus rollout: --candidate: only the [ab] "candidate" pool can be rolled out',
                file=sys.stderr,
            )
            return EXIT_USAGE
        body = {
            "action": "start",
            "steps": a.steps,
            "interval_s": a.interval,
            "max_error_rate": a.max_error_rate,
            "max_ttft_p95_s": a.max_ttft_p95,
            "min_requests": a.min_requests,
        }
    elif a.action != "status":
        body = {"action": a.action}
    try:
        status, answer = call(a.edge, token, body, a.timeout)
    except (OSError, ValueError) as exc:
        print(f"isthmus rollout: cannot reach {a.edge}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if status != 200:
        message = (answer.get("error") or {}).get("message", f"HTTP {status}")
        print(f"isthmus rollout: refused: {message}", file=sys.stderr)
        return EXIT_REFUSED
    print(describe(answer))
    return EXIT_OK
