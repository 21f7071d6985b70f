"""`isthmus chat`: stream answers from an edge and say which tier answered and why.

One prompt: stream it, then a summary line. No prompt: an interactive chat that keeps the
conversation as chat messages (so the edge sees every turn). Route changes mid-answer (a
hand-over to the center) are shown inline where they happen.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass
class Answer:
    """One streamed answer, as the chat and the demo report it."""

    text: str
    completion: Any  # isthmus.client.Completion
    handed_over: bool
    first_token_s: float | None  # seconds from send to the first chunk, measured here
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - (self.first_token_s or 0.0)
        num = self.completion.usage.completion_tokens
        return (num - 1) / decode_s if num > 1 and decode_s > 0 else 0.0


async def stream_answer(client: Any, prompt: Any, out: TextIO | None, **sampling: Any) -> Answer:
    """Send `prompt` (text or chat messages), echo the text to `out` as it streams."""
    started = time.monotonic()
    first: float | None = None
    handed_over = False
    parts: list[str] = []
    stream = client.generate(prompt, **sampling)
    async with stream:
        async for chunk in stream:
            if first is None:
                first = time.monotonic() - started
            if chunk.route is not None and parts:
                handed_over = True
                if out is not None:
                    out.write(f" [-> {chunk.route.tier}: {chunk.route.reason}] ")
            parts.append(chunk.text)
            if out is not None:
                out.write(chunk.text)
                out.flush()
    assert stream.completion is not None
    return Answer("".join(parts), stream.completion, handed_over, first, time.monotonic() - started)


def describe(answer: Answer) -> str:
    """`tier=center reason=score_above_threshold score=0.42 ...` for the line after an answer."""
    c = answer.completion
    route = c.route
    bits = [
        f"tier={route.tier}",
        f"reason={route.reason}",
        f"score={route.score:.2f}",
        f"degraded={'yes' if route.is_degraded else 'no'}",
        f"handed_over={'yes' if answer.handed_over else 'no'}",
        f"tokens={c.usage.prompt_tokens}+{c.usage.completion_tokens}",
        f"ttft={c.timings.first_token_ms:.0f}ms",
        f"finish={c.finish_reason}",
        f"model={c.model}",
    ]
    return " ".join(bits)


async def run_chat(
    address: str,
    ca: str | None,
    api_key: str | None,
    prompt: str | None,
    sampling: dict[str, Any],
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
) -> int:
    """The `chat` subcommand; returns the exit status."""
    from isthmus.client import connect
    from isthmus.client.errors import IsthmusError

    try:
        async with connect(address, api_key=api_key, ca=ca, retries=1) as client:
            if prompt is not None:
                # one user turn, so the model's chat template applies as in the interactive chat
                message = [{"role": "user", "content": prompt}]
                answer = await stream_answer(client, message, out, **sampling)
                out.write(f"\n[{describe(answer)}]\n")
                return 0
            return await _interactive(client, sampling, stdin, out)
    except IsthmusError as exc:
        print(f"isthmus chat: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"isthmus chat: is an edge listening on {address}? (`isthmus up` starts one; "
            "--edge and --ca point elsewhere)",
            file=sys.stderr,
        )
        return 1


async def _interactive(client: Any, sampling: dict[str, Any], stdin: TextIO, out: TextIO) -> int:
    out.write("isthmus chat: type a message, an empty line or Ctrl-D to quit, /reset to start over\n")
    messages: list[dict[str, str]] = []
    while True:
        out.write("you> ")
        out.flush()
        line = stdin.readline()
        if not line or not line.strip():
            return 0
        text = line.strip()
        if text == "/reset":
            messages.clear()
            continue
        messages.append({"role": "user", "content": text})
        out.write("isthmus> ")
        answer = await stream_answer(client, messages, out, **sampling)
        messages.append({"role": "assistant", "content": answer.text})
        out.write(f"\n[{describe(answer)}]\n")
