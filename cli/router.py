"""`isthmus router eval|train|explain`: measure, retrain and question the escalation router.

    isthmus router eval [--model FILE] [--data FILE ...] [--split test|train|all] [--threshold X]
    isthmus router train [--data FILE ...] [--base] [--out FILE]
                         [--target-agreement X | --target-edge-share X]
    isthmus router explain "prompt" [--model FILE] [--max-tokens N] [--turns N]

Without `--data`, eval and train use the project's corpus (`edge/routing_data/`); `train --data`
uses the operator's files, and `--base` adds the project's corpus to them. Both split every file
with the same fixed rule (`isthmus.edge.routing.corpus.split_of`). Exit status: 0 done, 1 a file
could not be used (the message names it), 2 a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from isthmus.edge.routing.corpus import Example

EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isthmus router", description="Measure, retrain and explain the router.")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    ev = sub.add_parser("eval", help="agreement, precision/recall, edge share, confusion, threshold table")
    ev.add_argument("--model", help="weights file (default: the bundled model)")
    ev.add_argument("--data", action="append", type=Path, help="JSONL file(s) (default: the project corpus)")
    ev.add_argument("--split", default="test", choices=["test", "train", "all"])
    ev.add_argument("--threshold", type=float, help="threshold to report at (default: the model's)")
    ev.add_argument("--no-baseline", action="store_true", help="skip the heuristic baseline comparison")

    tr = sub.add_parser("train", help="fit a router on labelled prompts and write a weights file")
    tr.add_argument(
        "--data", action="append", type=Path, help="your JSONL file(s) (default: the project corpus)"
    )
    tr.add_argument("--base", action="store_true", help="add the project corpus to --data")
    tr.add_argument("--out", type=Path, default=Path("router.npz"), help="weights file to write")
    target = tr.add_mutually_exclusive_group()
    target.add_argument("--target-agreement", type=float, help="cheapest threshold reaching this agreement")
    target.add_argument("--target-edge-share", type=float, help="best threshold reaching this edge share")
    tr.add_argument("--l2", type=float, action="append", help="L2 strength(s) to cross-validate")

    ex = sub.add_parser("explain", help="tier, score, threshold and top features of one prompt")
    ex.add_argument("prompt")
    ex.add_argument("--model", help="weights file (default: the bundled model)")
    ex.add_argument("--max-tokens", type=int, default=512)
    ex.add_argument("--turns", type=int, default=1)
    return p


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Value checks argparse cannot do; each error names the flag."""
    for flag in ("threshold", "target_agreement", "target_edge_share"):
        value = getattr(a, flag, None)
        if value is not None and not 0.0 <= value <= 1.0:
            p.error(f"--{flag.replace('_', '-')} must be between 0 and 1, got {value}")
    for path in getattr(a, "data", None) or []:
        if not path.is_file():
            p.error(f"--data: no such file {path}")
    if a.action == "train" and a.base and not a.data:
        p.error("--base adds the project corpus to --data: give --data FILE too")
    if a.action == "train" and any(v <= 0 for v in a.l2 or []):
        p.error("--l2 must be > 0")
    if a.action == "explain":
        if a.max_tokens < 1 or a.turns < 1:
            p.error("--max-tokens and --turns must be >= 1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    check_args(parser, a)
    from isthmus.edge.routing.corpus import CorpusError
    from isthmus.edge.routing.model import RouterModelError

    try:
        if a.action == "eval":
            return _eval(a)
        if a.action == "train":
            return _train(a)
        return _explain(a)
    except (CorpusError, RouterModelError, ValueError) as exc:
        print(f"isthmus router {a.action}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _examples(files: list[Path] | None, base: bool = False) -> list[Example]:
    from isthmus.edge.routing.corpus import dedupe, read_corpus, read_jsonl

    examples: list[Example] = []
    for path in files or []:
        examples.extend(read_jsonl(path))
    if base or not files:
        examples.extend(read_corpus())
    if not examples:
        raise ValueError("no labelled prompts found")
    return dedupe(examples)


def _eval(a: argparse.Namespace) -> int:
    import numpy as np
    from isthmus.edge.router import HEURISTIC_THRESHOLD, FeatureWeights, heuristic_score, load_model
    from isthmus.edge.routing.corpus import split
    from isthmus.edge.routing.evaluate import choose_threshold, format_report, report
    from isthmus.edge.routing.model import prompt_features
    from isthmus.edge.routing.train import score_examples

    model = load_model(a.model or "")
    if model is None:
        raise ValueError("--model heuristic: eval measures a weights file (it prints the baseline too)")
    train_set, test_set = split(_examples(a.data))
    chosen = {"test": test_set, "train": train_set, "all": train_set + test_set}[a.split]
    if not chosen:
        raise ValueError(f"the {a.split} split is empty")
    truth = np.array([ex.is_center for ex in chosen])
    langs = [ex.lang for ex in chosen]
    threshold = model.threshold if a.threshold is None else a.threshold
    print(f"model {model.source}")
    cv = model.info.get("cv")
    if isinstance(cv, dict) and all(isinstance(cv.get(k), (int, float)) for k in ("mean", "std")):
        print(
            f"  {cv.get('folds')}-fold cross-validation on its train split: agreement "
            f"{cv.get('mean', 0):.1%} +- {cv.get('std', 0):.1%} (folds {cv.get('agreements')})"
        )
    print(f"  threshold rule: {model.info.get('threshold_rule', '?')}")
    probs = score_examples(model, chosen)
    print(format_report(report(probs, truth, langs, threshold), f"{a.split} split"))
    if not a.no_baseline:
        weights = FeatureWeights()
        feats = [prompt_features(ex.prompt, ex.max_tokens, ex.num_turns) for ex in chosen]
        base = np.array([heuristic_score(f, weights) for f in feats])
        at_default = report(base, truth, langs, HEURISTIC_THRESHOLD)
        best_t, _ = choose_threshold(base, truth)
        at_best = report(base, truth, langs, best_t)
        print(
            f"baseline (old heuristic): agreement {at_default.agreement:.1%} at its default threshold "
            f"{HEURISTIC_THRESHOLD}, {at_best.agreement:.1%} at its best threshold {best_t:.2f} on this split"
        )
    return 0


def _train(a: argparse.Namespace) -> int:
    from isthmus.edge.routing.corpus import split
    from isthmus.edge.routing.train import L2_GRID, TrainOptions, train

    train_set, test_set = split(_examples(a.data, a.base))
    print(f"{len(train_set) + len(test_set)} prompts: {len(train_set)} train, {len(test_set)} test")
    options = TrainOptions(
        l2_grid=tuple(a.l2) if a.l2 else L2_GRID,
        target_agreement=a.target_agreement,
        target_edge_share=a.target_edge_share,
    )
    model = train(train_set, test_set, options, log=lambda line: print(line, flush=True))
    test = model.info.get("test")
    if isinstance(test, dict):
        per_lang = ", ".join(f"{k} {v[0]:.1%} (n={v[1]})" for k, v in test["per_lang"].items())
        print(
            f"test split at {model.threshold:.2f}: agreement {test['agreement']:.1%}, "
            f"edge share {test['edge_share']:.1%}; per language: {per_lang}"
        )
    try:
        path = model.save(a.out)
    except OSError as exc:
        raise ValueError(f"{a.out}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {path} ({path.stat().st_size} bytes); point an edge at it with [router] model = \"{path}\"")
    return 0


def _explain(a: argparse.Namespace) -> int:
    from isthmus.edge.router import RouterConfig, route_prompt

    config = RouterConfig(model=a.model or "")
    d = route_prompt(a.prompt, max_tokens=a.max_tokens, num_turns=a.turns, config=config, explain=True)
    print(f"tier      {d.tier} ({d.reason})")
    print(f"score     {d.score:.3f}  (probability that the prompt needs the center)")
    print(f"threshold {d.threshold:.3f}")
    print("top features (contribution to the log-odds; + pushes towards the center):")
    for name, c in d.top_features:
        print(f"  {c:+.3f}  {name}")
    return 0
