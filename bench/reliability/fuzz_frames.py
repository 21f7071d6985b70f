"""Fuzz the edge's frame decoding in-process: N generated hostile streams (default 1,000,000).

    .venv/bin/python bench/reliability/fuzz_frames.py [--frames N] [--seed S]

Feeds each stream (random bodies, mutated valid requests, wrong-typed msgpack maps, deep nesting,
headers at the limits) in random splits to the `FrameDecoder` the edge's streams use and
validates what decodes. Prints outcomes by error code; exit status 1 on any crash (an exception
other than `ProtocolError`, or a `ProtocolError` carrying INTERNAL).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.soak

from tests.soak.frames import fuzz_in_process


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1_000_000, help="streams to generate (default 1,000,000)")
    p.add_argument("--seed", type=int, default=2026, help="generator seed (default 2026)")
    a = p.parse_args(argv)
    if a.frames < 1:
        p.error(f"--frames must be >= 1, got {a.frames}")
    start = time.monotonic()
    counts = fuzz_in_process(a.frames, seed=a.seed)
    wall = time.monotonic() - start
    print(
        json.dumps(
            {"frames": a.frames, "seed": a.seed, "wall_s": round(wall, 1), "outcomes": dict(counts)}, indent=1
        )
    )
    return 1 if counts["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
