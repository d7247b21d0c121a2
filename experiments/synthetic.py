"""Source reversal, isolated: a synthetic translation task with a known answer.

The task: a source of random symbols `a0 .. a{V-1}`, 5 to 60 of them, and a target that
maps each symbol to its own target symbol (`a7` -> `b23`, a fixed random bijection) with
a local reordering: every two neighbours swap places (`x y z w` -> `Y X W Z`). So the
first target words depend on the first source words, the farthest apart a forward
encoder puts them; reversing the source makes them the last ones read (the paper's
"minimal time lag" argument, section 3.3). Nothing else differs between the two models:
same data, architecture, initial seed, batch order and number of updates.

    .venv/bin/python experiments/synthetic.py             # the documented run (~15 min on one core)
    .venv/bin/python experiments/synthetic.py --quick     # a tiny version (~1 min)

Writes the task's raw text (`prepare`'s input format, one sentence per line) under
`--work`, then `experiments/synthetic.json` and the plot `experiments/figures/synthetic.*`:
exact-match accuracy and BLEU (greedy decoding) against source length, both directions.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "valid", "test")


def target_of(source: list[str], mapping: dict[str, str]) -> list[str]:
    """The task's answer: each symbol mapped, then every two neighbours swapped."""
    mapped = [mapping[s] for s in source]
    for i in range(0, len(mapped) - 1, 2):
        mapped[i], mapped[i + 1] = mapped[i + 1], mapped[i]
    return mapped


def generate(out: Path, sizes: dict[str, int], min_len: int, max_len: int, vocab: int,
             seed: int) -> dict[str, list[tuple[str, str]]]:
    """Write `{split}.src` / `{split}.tgt` under `out`; the pairs of each split."""
    rng = random.Random(seed)
    symbols = [f"a{i}" for i in range(vocab)]
    images = [f"b{i}" for i in range(vocab)]
    rng.shuffle(images)
    mapping = dict(zip(symbols, images))
    out.mkdir(parents=True, exist_ok=True)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:
        rows = []
        for _ in range(sizes[split]):
            source = [rng.choice(symbols) for _ in range(rng.randint(min_len, max_len))]
            rows.append((" ".join(source), " ".join(target_of(source, mapping))))
        for side, column in zip(("src", "tgt"), zip(*rows)):
            (out / f"{split}.{side}").write_text("\n".join(column) + "\n", encoding="utf-8")
        pairs[split] = rows
    return pairs


def train_pair(data: Path, work: Path, settings: dict) -> dict[str, Path]:
    """Train the forward and the reversed model on the same budget; their best checkpoints."""
    from seq2seq.config import config_from_dict
    from seq2seq.train import Trainer

    runs = {}
    for name, reverse in (("forward", False), ("reversed", True)):
        cfg = config_from_dict({
            "model": {**settings["model"], "reverse_source": reverse},
            "batching": {"batch_size": settings["batch_size"]},
            "optim": {"optimizer": "adam", "lr": settings["lr"], "clip_norm": 5.0,
                      "max_steps": settings["steps"]},
            "train": {"seed": settings["seed"], "threads": settings["threads"],
                      "log_every": settings["valid_every"],
                      "valid_every": settings["valid_every"], "precision": "fp32",
                      "device": "cpu"},
        }, where="synthetic")
        run_dir = work / name
        shutil.rmtree(run_dir, ignore_errors=True)  # always from scratch: minutes, not hours
        Trainer(cfg, data, run_dir).train()
        runs[name] = run_dir
    return runs


def per_token_nll(translator, pairs: list[tuple[str, str]]) -> float:
    """-log p(T|S) per target token (</s> included) over `pairs`."""
    sources, targets = zip(*pairs)
    total = -sum(translator.score(list(sources), list(targets)))
    return total / sum(len(t.split()) + 1 for t in targets)


def measure(run_dir: Path, test: list[tuple[str, str]], valid: list[tuple[str, str]],
            long_from: int, width: int) -> dict:
    """Exact match and BLEU by source length on `test`; NLL of short and long `valid` pairs."""
    import sacrebleu

    from seq2seq.translator import Translator

    translator = Translator.load(run_dir / "best.pt", device="cpu")
    sources, refs = zip(*test)
    hyps = [t.text for t in translator.translate(list(sources), beam=1)]
    lengths = [len(s.split()) for s in sources]
    buckets = []
    for low in range(min(lengths) // width * width, max(lengths) + 1, width):
        idx = [i for i, n in enumerate(lengths) if low <= n < low + width]
        if not idx:
            continue
        buckets.append({
            "low": low, "high": low + width, "sentences": len(idx),
            "exact_match": sum(hyps[i] == refs[i] for i in idx) / len(idx),
            "bleu": sacrebleu.corpus_bleu([hyps[i] for i in idx],
                                          [[refs[i] for i in idx]]).score,
        })
    short = [p for p in valid if len(p[0].split()) < long_from]
    long = [p for p in valid if len(p[0].split()) >= long_from]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
        "bleu": sacrebleu.corpus_bleu(hyps, [list(refs)]).score,
        "valid_nll_short": per_token_nll(translator, short),
        "valid_nll_long": per_token_nll(translator, long),
        "by_length": buckets,
        "curve": [{"step": m["step"], "valid_ppl": m["valid_ppl"]} for m in metrics
                  if "valid_ppl" in m],
    }


def plot(results: dict, out: Path) -> list[Path]:
    from seq2seq.analysis import figure, save_figure

    fig, axes = figure(ncols=2, figsize=(11, 4.2))
    for name, style in (("forward", "o--"), ("reversed", "s-")):
        rows = results["models"][name]["by_length"]
        x = [(r["low"] + r["high"] - 1) / 2 for r in rows]
        axes[0].plot(x, [100 * r["exact_match"] for r in rows], style, label=f"{name} source")
        axes[1].plot(x, [r["bleu"] for r in rows], style, label=f"{name} source")
    steps = results["settings"]["steps"]
    axes[0].set(xlabel="source length (symbols)", ylabel="exact match (%)",
                title=f"Synthetic task, {steps} updates each: exact match")
    axes[1].set(xlabel="source length (symbols)", ylabel="BLEU",
                title="Synthetic task: BLEU (greedy)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, out)


FULL = {"train": 20_000, "valid": 1_000, "test": 2_000, "min_len": 5, "max_len": 60,
        "vocab": 40, "steps": 1000, "batch_size": 64, "lr": 0.003, "valid_every": 250,
        "model": {"embed_dim": 64, "hidden_size": 128, "num_layers": 2}}
QUICK = {"train": 4_000, "valid": 400, "test": 400, "min_len": 5, "max_len": 24,
         "vocab": 12, "steps": 600, "batch_size": 32, "lr": 0.005, "valid_every": 200,
         "model": {"embed_dim": 32, "hidden_size": 128, "num_layers": 1}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny task and model, about a minute (what the test runs)")
    parser.add_argument("--seed", type=int, default=1, help="task, weights and batch order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "synthetic")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "synthetic.json")
    parser.add_argument("--figure", default=str(ROOT / "experiments" / "figures" / "synthetic"),
                        help="plot prefix (.png and .svg); '' for none")
    args = parser.parse_args(argv)
    import torch

    from seq2seq.cli import log_to_stderr
    from seq2seq.device import setup_process

    log_to_stderr()
    setup_process("train", torch.device("cpu"), args.threads)
    settings = {**(QUICK if args.quick else FULL), "seed": args.seed, "threads": args.threads}
    start = time.perf_counter()
    from seq2seq.prepare import prepare

    raw = args.work / "raw"
    pairs = generate(raw, {s: settings[s] for s in SPLITS}, settings["min_len"],
                     settings["max_len"], settings["vocab"], args.seed)
    data = args.work / "data"
    prepare(raw / "train.src", raw / "train.tgt", raw / "valid.src", raw / "valid.tgt", data,
            src_vocab=settings["vocab"], tgt_vocab=settings["vocab"], tokenizer="space",
            max_len=settings["max_len"] + 1, src_lang="en", tgt_lang="en", force=True)
    runs = train_pair(data, args.work, settings)
    long_from = math.ceil((settings["min_len"] + settings["max_len"]) / 2)
    width = 5 if not args.quick else 4
    results = {
        "command": " ".join(["python experiments/synthetic.py",
                             *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "settings": settings, "long_from": long_from,
        "models": {name: measure(run, pairs["test"], pairs["valid"], long_from, width)
                   for name, run in runs.items()},
    }
    results["wall_seconds"] = round(time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for name, m in results["models"].items():
        print(f"{name:>8}: exact match {100 * m['exact_match']:.1f}%, BLEU {m['bleu']:.2f}, "
              f"valid NLL/token {m['valid_nll_short']:.3f} (source < {long_from}) "
              f"{m['valid_nll_long']:.3f} (>= {long_from})")
    if args.figure:
        print("\n".join(map(str, plot(results, Path(args.figure)))))
    print(f"wrote {args.out} in {results['wall_seconds']} s")


if __name__ == "__main__":
    main()
