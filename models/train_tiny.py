"""Train the default edge and center models (plain PyTorch, CPU, fixed seeds) and write them here.

    .venv/bin/python -m isthmus.models.train_tiny     # both: models/edge-default, models/center-default
    .venv/bin/python -m isthmus.models.train_tiny --only edge --steps 20 --out /tmp/try   # a quick try

Text: CPython's own documentation as chat turns (`corpus.py`); 5% of its documents are held out.
A byte-level BPE tokenizer is trained on the training text and shared by both models (same
tokenizer fingerprint, so a hand-over carries token ids). Each model is a LLaMA (`llama.py`)
trained on windows of the tokenized chat samples, then written in the project's Hugging Face
layout by `isthmus.models.tiny_checkpoint.make_tiny_checkpoint` (config, generation config) with the trained
float16 weights, this tokenizer, a model card and a `sha256sums.txt` manifest. The held-out
perplexity printed and written into the card is measured on the float16 weights as shipped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from isthmus.engine.model.checkpoint import SINGLE_FILE, write_checksums
from isthmus.models.card import write_card
from isthmus.models.corpus import Sample, all_samples, is_held_out
from isthmus.models.llama import Llama, Shape

MODELS_DIR = Path(__file__).resolve().parent
VOCAB_SIZE = 4096  # tokens: most documentation words are one token
SEQ_LEN = 128  # tokens per training window (a question and an answer of a few sentences)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Recipe:
    """How one default model is trained."""

    name: str
    shape: Shape
    steps: int
    batch_size: int  # windows of SEQ_LEN tokens per step
    lr: float
    seed: int
    warmup_steps: int = 30


EDGE = Recipe(
    "edge-default",
    Shape(
        hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384,
        vocab_size=VOCAB_SIZE,
    ),
    steps=300,
    batch_size=16,
    lr=3e-3,
    seed=1,
)
CENTER = Recipe(
    "center-default",
    Shape(
        hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=704,
        vocab_size=VOCAB_SIZE,
    ),
    steps=350,
    batch_size=16,
    lr=2e-3,
    seed=2,
)


def train_tokenizer(texts: list[str], folder: Path) -> None:
    """Byte-level BPE as `models/tiny_tokenizer.py` builds it, trained on `texts`; written to `folder`."""
    from isthmus.models.tiny_tokenizer import BOS_TOKEN, EOS_TOKEN, tokenizer_config
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, 0)]
    )
    if tok.get_vocab_size() != VOCAB_SIZE or tok.token_to_id(BOS_TOKEN) != 0:
        bos = tok.token_to_id(BOS_TOKEN)
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, bos id {bos}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = json.dumps(tokenizer_config(), indent=2, ensure_ascii=False)
    (folder / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")


def encode_samples(folder: Path, samples: list[Sample]) -> list[list[int]]:
    """Each sample as the chat template renders a finished turn (bos ... eos), via isthmus' tokenizer."""
    from isthmus.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(folder)
    return [
        tok.encode_chat(
            [{"role": "user", "content": s.question}, {"role": "assistant", "content": s.answer}],
            add_generation_prompt=False,
        )
        for s in samples
    ]


def windows(stream: torch.Tensor, starts: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    """`batch` windows of SEQ_LEN + 1 tokens, each starting at a random sample's bos."""
    pick = starts[torch.randint(len(starts), (batch,), generator=gen)]
    return torch.stack([stream[s : s + SEQ_LEN + 1] for s in pick.tolist()])


def lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(recipe: Recipe, train_ids: list[list[int]], log_every: int = 50) -> Llama:
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    flat = [t for ids in train_ids for t in ids]
    lengths = torch.tensor([0] + [len(ids) for ids in train_ids]).cumsum(0)[:-1]
    starts = lengths[lengths < len(flat) - SEQ_LEN - 1]
    stream = torch.tensor(flat)
    model = Llama(recipe.shape)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
    started = time.monotonic()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        batch = windows(stream, starts, recipe.batch_size, gen)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == recipe.steps - 1:
            elapsed = time.monotonic() - started
            print(f"  {recipe.name} step {step:4d}  loss {loss.item():.3f}  {elapsed:6.0f} s", flush=True)
    return model


@torch.no_grad()
def held_out_nll(model: Llama, held_ids: list[list[int]]) -> float:
    """Mean NLL (nats/token) over every held-out token after the first, one sample at a time."""
    model.eval()
    total, count = 0.0, 0
    for ids in held_ids:
        x = torch.tensor(ids[: SEQ_LEN + 1])[None]
        logits = model(x[:, :-1])
        total += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
    return total / count


def to_float16(model: Llama) -> Llama:
    """The model with its weights rounded to float16 and back: what the checkpoint holds."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def write_model(model: Llama, recipe: Recipe, tok_dir: Path, out: Path, facts: dict[str, object]) -> None:
    """The checkpoint folder `out`: the engine's writer for config files, then our weights and tokenizer."""
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
    from safetensors.torch import load_file, save_file

    s = recipe.shape
    tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=out.parent))
    make_tiny_checkpoint(
        tmp,
        "llama",
        hidden_size=s.hidden_size,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        num_kv_heads=s.num_kv_heads,
        intermediate_size=s.intermediate_size,
        vocab_size=s.vocab_size,
        tie_word_embeddings=s.tie_word_embeddings,
        rope_theta=s.rope_theta,
        dtype="float16",
    )
    expected = {k: v.shape for k, v in load_file(str(tmp / SINGLE_FILE)).items()}
    tensors = {k: v.half() for k, v in model.checkpoint_tensors().items()}
    if {k: v.shape for k, v in tensors.items()} != expected:
        raise RuntimeError("trained tensors differ from the checkpoint layout the engine expects")
    save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copyfile(tok_dir / name, tmp / name)
    (tmp / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    write_card(tmp, facts)
    write_checksums(tmp, sorted(p.name for p in tmp.iterdir() if p.name != "sha256sums.txt"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def _facts(
    model: Llama, recipe: Recipe, train_ids: list[list[int]], held_ids: list[list[int]], nll: float
) -> dict[str, object]:
    """What the model card and `training.json` report."""
    return {
        "name": recipe.name,
        "shape": asdict(recipe.shape),
        "num_parameters": sum(t.numel() for t in model.checkpoint_tensors().values()),
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "seq_len": SEQ_LEN,
        "lr": recipe.lr,
        "seed": recipe.seed,
        "train_samples": len(train_ids),
        "train_tokens": sum(map(len, train_ids)),
        "tokens_seen": recipe.steps * recipe.batch_size * SEQ_LEN,
        "held_out_samples": len(held_ids),
        "held_out_tokens": sum(min(len(ids), SEQ_LEN + 1) - 1 for ids in held_ids),
        "held_out_nll": round(nll, 4),
        "held_out_perplexity": round(math.exp(nll), 2),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=MODELS_DIR, help="folder for <name>/ checkpoints")
    p.add_argument("--only", choices=("edge", "center"), help="train one model only")
    p.add_argument("--steps", type=int, help="override the recipes' step counts (quick tries)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: edge and center side by side)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    samples = all_samples()
    train_s = [s for s in samples if not is_held_out(s)]
    held_s = [s for s in samples if is_held_out(s)]
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp)
        train_tokenizer([f"User: {s.question}\n\nAssistant: {s.answer}" for s in train_s], tok_dir)
        train_ids, held_ids = encode_samples(tok_dir, train_s), encode_samples(tok_dir, held_s)
        num_tokens = sum(map(len, train_ids))
        print(f"{len(train_s)} training samples ({num_tokens} tokens), {len(held_s)} held out", flush=True)
        recipes = [r for r in (EDGE, CENTER) if a.only is None or r.name.startswith(a.only)]
        for recipe in recipes:
            if a.steps:
                recipe = replace(recipe, steps=a.steps)
            started, cpu_started = time.monotonic(), time.process_time()
            model = to_float16(train(recipe, train_ids))
            nll = held_out_nll(model, held_ids)
            facts = {
                **_facts(model, recipe, train_ids, held_ids, nll),
                "train_wall_seconds": round(time.monotonic() - started),
                "train_cpu_seconds": round(time.process_time() - cpu_started),
            }
            write_model(model, recipe, tok_dir, a.out / recipe.name, facts)
            print(
                f"{recipe.name}: held-out perplexity {math.exp(nll):.2f} (NLL {nll:.3f} nats/token), "
                f"{facts['num_parameters']} parameters, {facts['train_cpu_seconds']} s of CPU",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
