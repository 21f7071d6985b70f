"""`isthmus demo`: bring a network up, answer a handful of prompts, print a table, shut down.

The prompts are chosen so the router answers some at the edge and escalates others (code, math,
multi-step, or an explicit ``tier="center"``), and one easy prompt is handed to the center
mid-answer: the network's confidence monitor (window/threshold in `NetworkSettings`) fires on its
greedy answer from the default random-weight edge model, deterministically (fixed seeds).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from .chat import Answer, stream_answer
from .network import LocalNetwork


@dataclass(frozen=True)
class DemoPrompt:
    text: str
    tier: str = "auto"


PROMPTS = (
    DemoPrompt("Hi there!"),
    DemoPrompt("Write a Python function that implements binary search, then explain its complexity."),
    DemoPrompt("Prove that the sum of two even numbers is even, step by step."),
    DemoPrompt("Name a colour.", tier="center"),
    DemoPrompt("Tell me a story"),
    DemoPrompt("Good morning"),
)
MAX_TOKENS = 16  # tokens per answer: enough to see streaming and a hand-over, quick on 2 cores


async def run_prompts(net: LocalNetwork, out: TextIO) -> list[tuple[DemoPrompt, Answer]]:
    """Each demo prompt, greedy, streamed to `out`; the answers in order."""
    from isthmus.client import connect

    results: list[tuple[DemoPrompt, Answer]] = []
    async with connect(net.node.quic_address, ca=str(net.ca_path)) as client:
        for prompt in PROMPTS:
            wish = f"  (tier={prompt.tier})" if prompt.tier != "auto" else ""
            out.write(f"\n> {prompt.text}{wish}\n")
            answer = await stream_answer(
                client,
                prompt.text,
                out,
                tier=prompt.tier,
                max_tokens=MAX_TOKENS,
                temperature=0.0,
                ignore_eos=True,
            )
            route = answer.completion.route
            out.write(
                f"\n  [answered by {route.tier}: {route.reason}"
                f"{', handed over mid-answer' if answer.handed_over else ''}]\n"
            )
            results.append((prompt, answer))
    return results


def table(results: list[tuple[DemoPrompt, Answer]]) -> str:
    """The summary table: prompt, tier, route reason, first-token latency, tokens/s, hand-over."""
    head = ("prompt", "tier", "route reason", "first token ms", "tokens/s", "handed over")
    rows = [head]
    for prompt, a in results:
        c = a.completion
        text = prompt.text if len(prompt.text) <= 40 else prompt.text[:37] + "..."
        tier = "edge->center" if a.handed_over else c.route.tier
        rows.append(
            (
                text,
                tier,
                c.route.reason,
                f"{c.timings.first_token_ms:.0f}",
                f"{a.tokens_per_s:.1f}",
                "yes" if a.handed_over else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def run_demo(net: LocalNetwork, out: TextIO = sys.stdout) -> int:
    """Up, prompts, table, down; 0 when the network answered every prompt."""
    out.write(
        "isthmus demo: the default models have RANDOM weights, so answers are gibberish; the demo\n"
        "shows the network (routing, escalation, mid-answer hand-over, streaming), not a model.\n"
        "Real models: isthmus demo --edge-model /models/deepseek-r1-distill-qwen-1.5b "
        "--center-model /models/deepseek-llm-7b-chat\n\n"
    )
    out.flush()
    try:
        await net.start()
        results = await run_prompts(net, out)
    finally:
        await net.stop()
    out.write("\n" + table(results) + "\n")
    num_handed = sum(a.handed_over for _, a in results)
    num_edge = sum(1 for _, a in results if not a.handed_over and a.completion.route.tier == "edge")
    num_center = sum(1 for _, a in results if not a.handed_over and a.completion.route.tier == "center")
    out.write(
        f"\n{len(results)} prompts: {num_edge} answered at the edge, {num_center} escalated to the "
        f"center, {num_handed} handed over mid-answer.\n"
    )
    out.flush()
    return 0
