"""`isthmus router eval|train|explain`: the figures, a retrained file an edge can point at, and
errors that name the file or the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from isthmus.cli.main import main as isthmus_main
from isthmus.cli.router import main


def test_eval_prints_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "5-fold cross-validation on its train split",
        "test split:",
        "agreement",
        "edge share",
        "center precision",
        "recall",
        "label edge",
        "label center",
        "per language",
        "    en ",
        "    zh ",
        "threshold table",
        "0.50 ->",
        "baseline (old heuristic)",
    ):
        assert needle in out, needle


def test_train_then_explain_with_the_new_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mine.jsonl"
    rows = [
        {"prompt": f"Write a poem about {w}.", "label": "center"}
        for w in ("rain", "snow", "wind", "fire", "stone", "trees", "rivers", "stars", "clouds", "roads")
    ]
    rows += [
        {"prompt": f"What is the capital of {c}?", "label": "edge"}
        for c in ("Peru", "Chile", "Kenya", "Laos", "Nepal", "Oman", "Fiji", "Mali", "Chad", "Iran")
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out_file = tmp_path / "mine.npz"
    assert (
        isthmus_main(["router", "train", "--data", str(data), "--out", str(out_file), "--l2", "0.001"]) == 0
    )
    out = capsys.readouterr().out
    assert "5-fold agreement" in out and f"wrote {out_file}" in out and out_file.is_file()
    assert main(["explain", "Write a poem about the sea.", "--model", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "tier      center" in out and "score" in out and "threshold" in out and "top features" in out


def test_explain_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "设计一个支持百万QPS的分布式限流器"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tier      center") and '"' in out


def test_bad_model_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.npz"
    bad.write_text("nope")
    assert main(["explain", "hi", "--model", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"router model {bad}: not a readable .npz" in err


def test_bad_corpus_line_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "hi", "label": "maybe"}\n')
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "x.npz")]) == 1
    assert "mine.jsonl:1: label" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--threshold", "1.5"], "--threshold must be between 0 and 1"),
        (["train", "--base"], "--base adds the project corpus to --data"),
        (["train", "--data", "/nonexistent.jsonl"], "--data: no such file"),
        (["explain", "hi", "--max-tokens", "0"], "--max-tokens and --turns must be >= 1"),
        (["train", "--target-agreement", "0.9", "--target-edge-share", "0.5"], "not allowed with"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_base_adds_the_project_corpus_to_the_operators_file(tmp_path: Path) -> None:
    from isthmus.cli.router import _examples
    from isthmus.edge.routing.corpus import read_corpus

    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "Write a poem about tea.", "label": "center"}\n')
    assert [ex.prompt for ex in _examples([data])] == ["Write a poem about tea."]
    merged = _examples([data], base=True)
    assert merged[0].prompt == "Write a poem about tea." and len(merged) == 1 + len(read_corpus())


def test_eval_of_the_heuristic_is_refused_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", "heuristic"]) == 1
    assert "eval measures a weights file" in capsys.readouterr().err
    assert main(["explain", "hello", "--model", "heuristic"]) == 0
    assert "tier      edge" in capsys.readouterr().out
