"""Training: the fitter, calibration, the threshold knob, the fixed split, and an operator's
retraining moving decisions the way their labels say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from isthmus.edge.router import Router, RouterConfig, route_prompt
from isthmus.edge.routing.corpus import CorpusError, Example, read_jsonl, split, split_of
from isthmus.edge.routing.evaluate import choose_threshold, report
from isthmus.edge.routing.fit import Csr, fit_logistic, fit_platt, kfold_indices
from isthmus.edge.routing.model import prompt_features
from isthmus.edge.routing.train import TrainOptions, train

# An operator whose edge model is poor at verse: poems go to the center, small talk stays.
POEMS = [
    "Write a haiku about the first snow of winter.",
    "Compose a short poem about my grandmother's kitchen.",
    "Write a limerick about a cat who loves jazz.",
    "A four-line poem about the ocean at night, please.",
    "Write a sonnet about leaving home for university.",
    "Compose a rhyming poem about autumn leaves for a card.",
    "Write a short free-verse poem about a train station.",
    "Give me a poem about coffee on a rainy Monday.",
    "Write a haiku about a mountain lake at dawn.",
    "Compose a poem for my friend's wedding about two rivers meeting.",
    "Write a short poem about a lighthouse keeper.",
    "A rhyming poem about a dog waiting at the door.",
    "Write verses about the smell of bread in the morning.",
    "Compose a haiku sequence about a garden in spring.",
    "Write a poem about the moon over a quiet city.",
    "Write a ballad-style poem about an old fisherman.",
]
CHAT = [
    "Hi, how are you?",
    "What's a good name for a goldfish?",
    "Thanks for your help earlier!",
    "What time zone is Berlin in?",
    "Tell me a fun fact about penguins.",
    "Good night!",
    "What is the capital of Canada?",
    "How many days are in a leap year?",
    "Recommend a board game for four people.",
    "What colour do you get mixing blue and yellow?",
    "Say hello in Spanish.",
    "Is a tomato a fruit?",
    "What's the boiling point of water in Fahrenheit?",
    "Suggest a name for a bakery.",
    "Who wrote Pride and Prejudice?",
    "How do I say thank you in Japanese?",
]


def write_operator_file(path: Path) -> Path:
    lines = [json.dumps({"prompt": p, "label": "center"}) for p in POEMS]
    lines += [json.dumps({"prompt": p, "label": "edge"}) for p in CHAT]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_fit_logistic_separates_a_simple_problem() -> None:
    rng = np.random.default_rng(1)
    rows, y = [], []
    for i in range(200):
        label = i % 2
        idx = np.array([0, 1 + label, 3])
        vals = np.array([rng.normal(), 1.0, rng.normal() * 0.1])
        rows.append((idx, vals))
        y.append(label)
    x, labels = Csr.from_rows(rows, 4), np.array(y, dtype=float)
    fitted = fit_logistic(x, labels, l2=1e-3)
    assert np.mean((fitted.margins(x) > 0) == (labels > 0)) == 1.0
    assert fitted.weights[2] > 0 > fitted.weights[1]
    a, b = fit_platt(fitted.margins(x), labels)
    assert a > 0 and np.isfinite(b)
    assert Csr.from_rows(rows, 4).take(np.array([3, 1])).num_rows == 2


def test_kfold_is_stratified_and_covers_every_row() -> None:
    labels = np.array([1.0] * 30 + [0.0] * 70)
    folds = kfold_indices(labels, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    assert all(labels[f].sum() == 6 for f in folds)


def test_split_is_fixed_by_the_text_alone() -> None:
    prompts = [f"prompt number {i}" for i in range(2000)]
    sides = [split_of(p) for p in prompts]
    assert 0.17 < sides.count("test") / len(sides) < 0.23
    assert sides == [split_of(p) for p in reversed(prompts)][::-1]
    # pinned: changing the rule would silently move prompts between train and test
    assert [i for i, side in enumerate(sides[:12]) if side == "test"] == [6, 9]


def test_choose_threshold_rules() -> None:
    probs = np.array([0.05, 0.2, 0.35, 0.45, 0.55, 0.65, 0.8, 0.95])
    truth = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    t, why = choose_threshold(probs, truth)
    assert report(probs, truth, ["en"] * 8, t).agreement == 0.875 and "best agreement" in why
    t, _ = choose_threshold(probs, truth, target_edge_share=0.5)
    assert report(probs, truth, ["en"] * 8, t).edge_share >= 0.5
    t, _ = choose_threshold(probs, truth, target_agreement=0.75)
    r = report(probs, truth, ["en"] * 8, t)
    assert r.agreement >= 0.75 and r.edge_share == 0.75  # the cheapest threshold at that quality
    r = report(probs, truth, ["en", "zh"] * 4, 0.5)
    assert r.confusion == {"center": {"center": 3, "edge": 1}, "edge": {"center": 1, "edge": 3}}
    assert set(r.per_lang) == {"en", "zh"} and len(r.table) == 9


def test_corpus_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "hi", "label": "edge"}\n\n{"prompt": "x", "label": "hard"}\n')
    with pytest.raises(CorpusError, match=r"mine.jsonl:3: label"):
        read_jsonl(path)
    path.write_text('{"prompt": "hi", "label": "edge", "max_tokens": 0}\n')
    with pytest.raises(CorpusError, match=r"mine.jsonl:1: max_tokens"):
        read_jsonl(path)
    path.write_text("not json\n")
    with pytest.raises(CorpusError, match=r"mine.jsonl:1: not valid JSON"):
        read_jsonl(path)


def test_retraining_on_an_operator_file_moves_decisions_their_way(tmp_path: Path) -> None:
    examples = read_jsonl(write_operator_file(tmp_path / "ops.jsonl"))
    train_set, test_set = split(examples)
    model = train(train_set, test_set, TrainOptions(l2_grid=(1e-3,)), log=lambda _: None)
    path = model.save(tmp_path / "ops.npz")
    probes = ["Write a poem about a snowy forest.", "Compose a haiku about the city at night."]
    mine = RouterConfig(model=str(path))
    for probe in probes:
        before, after = route_prompt(probe), route_prompt(probe, config=mine)
        assert before.tier == "edge", before  # the project's corpus: creative chat is edge work
        assert after.tier == "center" and after.score > before.score, after
    small_talk = route_prompt("What's your favourite colour?", config=mine)
    assert small_talk.tier == "edge"
    assert Router(mine).model is not None


def test_train_refuses_one_label_only() -> None:
    same = [Example(f"p{i}", "edge") for i in range(20)]
    with pytest.raises(ValueError, match="both labels"):
        train(same, [], log=lambda _: None)
    assert prompt_features("x").text == "x"
