"""Source reversal, isolated: synthetic translation tasks with a known answer, and controls.

Every task maps a source of random symbols `a0 .. a{V-1}` to their images under one fixed
random bijection (`a7` -> `b23`); the tasks differ only in the order of the target:

- `monotone`: the images in the source's order, every two neighbours swapped
  (`x y z w` -> `Y X W Z`). The first target words depend on the first source words, the
  farthest apart a forward encoder puts them; reversing the source makes them the last ones
  read (the paper's "minimal time lag" argument, section 3.3). Reversal should win.
- `anti-monotone`: the images in reverse order (`x y z w` -> `W Z Y X`). Now the forward
  reading puts each target word's source nearest to it, so forward should win.
- `permutation`: the images reordered by one fixed random permutation per length (the same
  for every sentence of that length). No direction brings the dependencies closer on
  average, so neither should have a systematic advantage.

Each model is measured on the test set (greedy decoding: whole-sentence exact match, BLEU,
per-token perplexity) and by its validation curve; `curve_nll`, the mean validation NLL
over training, tells how soon it learnt, which separates two models that both end solved.
The mechanism is falsified if reversal does not beat the forward reading on `monotone`,
seed by seed (a forward and a reversed model of one seed share the data, initial weights
and batch order), or if it beats it on `anti-monotone` too, or clearly on `permutation`:
then reading backwards helps for some other reason than shorter time lags.

    .venv/bin/python experiments/synthetic.py             # the documented run (18 models)
    .venv/bin/python experiments/synthetic.py --quick     # a tiny version (about a minute)
    .venv/bin/python experiments/synthetic.py --tasks monotone --seeds 1   # a subset

The full run's models take about 4 CPU-minutes each (250 s measured for one, on a busy
2-core AMD EPYC Zen 4), so about 75 minutes on one core for all 18.

Each task's data (`prepare`'s input and output) and models live under `--work/{task}/`;
each model's measures go to `--work/{task}/results/{direction}-seed{k}.json`, and a model
whose file is there is not trained again, so a stopped run continues where it stopped (a
task folder made with other settings is started afresh). Then writes one JSON (`--out`:
`results["tasks"][task][direction][seed]`, each length's order of the permutation task in
`results["permutations"]`) and the plot (`--figure`): exact match by source length and the
validation curves, forward against reversed, the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "valid", "test")
TASKS = ("monotone", "anti-monotone", "permutation")
DIRECTIONS = {"forward": "none", "reversed": "pieces"}  # name -> model.reverse_source

log = logging.getLogger("seq2seq.synthetic")


# ------------------------------------------------------------------ the tasks


def permutation_of(length: int, seed: int) -> list[int]:
    """The `permutation` task's order for `length` symbols: target position i takes the
    mapped source symbol at position order[i]. Fixed by (length, seed)."""
    order = list(range(length))
    random.Random(f"permutation {seed} {length}").shuffle(order)
    return order


def target_of(source: list[str], mapping: dict[str, str], task: str, seed: int) -> list[str]:
    """The answer of `task` (one of TASKS) for `source`: each symbol mapped, then reordered."""
    mapped = [mapping[s] for s in source]
    if task == "monotone":
        for i in range(0, len(mapped) - 1, 2):
            mapped[i], mapped[i + 1] = mapped[i + 1], mapped[i]
        return mapped
    if task == "anti-monotone":
        return mapped[::-1]
    if task == "permutation":
        return [mapped[i] for i in permutation_of(len(mapped), seed)]
    raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")


def generate(out: Path, task: str, sizes: dict[str, int], min_len: int, max_len: int,
             vocab: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Write `{split}.src` / `{split}.tgt` under `out`; the (source, target) pairs of each
    split. `seed` fixes the mapping and the sources, the same for every task."""
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
            rows.append((" ".join(source), " ".join(target_of(source, mapping, task, seed))))
        for side, column in zip(("src", "tgt"), zip(*rows)):
            (out / f"{split}.{side}").write_text("\n".join(column) + "\n", encoding="utf-8")
        pairs[split] = rows
    return pairs


def prepare_task(task: str, settings: dict, work: Path) -> dict[str, list[tuple[str, str]]]:
    """The task's data under `work` (raw text and `prepare`'s directory); its pairs.

    `work/settings.json` records the settings the folder was made with: other settings
    empty it first, so the models and results found there are always of these settings.
    """
    from seq2seq.prepare import prepare

    stamp = work / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")) != settings:
        log.info(f"{work}: made with other settings; starting it afresh")
        shutil.rmtree(work)
    raw = work / "raw"
    pairs = generate(raw, task, {s: settings[s] for s in SPLITS}, settings["min_len"],
                     settings["max_len"], settings["vocab"], settings["data_seed"])
    if not stamp.exists():
        prepare(raw / "train.src", raw / "train.tgt", raw / "valid.src", raw / "valid.tgt",
                work / "data", src_vocab=settings["vocab"], tgt_vocab=settings["vocab"],
                tokenizer="space", max_len=settings["max_len"] + 1, src_lang="en",
                tgt_lang="en", force=True)
        stamp.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    return pairs


# ------------------------------------------------------------------ one model


def train_model(data: Path, run_dir: Path, settings: dict, direction: str, seed: int,
                threads: int) -> None:
    """Train one model into `run_dir` (resuming its last.pt if a run was stopped).

    Forward and reversed models of one seed differ only in `model.reverse_source`: the same
    data, initial weights (`train.seed`), batch order and number of updates.
    """
    from seq2seq.config import config_from_dict
    from seq2seq.train import Trainer

    cfg = config_from_dict({
        "model": {**settings["model"], "reverse_source": DIRECTIONS[direction]},
        "batching": {"batch_size": settings["batch_size"]},
        "optim": {"optimizer": "adam", "lr": settings["lr"], "clip_norm": 5.0,
                  "decay_start": settings["decay_start"], "max_steps": settings["steps"]},
        "train": {"seed": seed, "threads": threads, "log_every": settings["valid_every"],
                  "valid_every": settings["valid_every"], "precision": "fp32",
                  "device": "cpu"},
    }, where="synthetic")
    Trainer(cfg, data, run_dir).train()


def measure(run_dir: Path, test: list[tuple[str, str]], width: int) -> dict:
    """The best checkpoint (by validation perplexity) on `test`, greedy decoding: exact
    match (whole sentences), BLEU and per-token perplexity (</s> included), in all and by
    source length (`width` symbols a bucket); the validation curve of the run."""
    import sacrebleu

    from seq2seq.rundir import RunDir
    from seq2seq.translator import Translator

    translator = Translator.load(RunDir(run_dir).best, device="cpu")
    sources, refs = map(list, zip(*test))
    hyps = [t.text for t in translator.translate(sources, beam=1)]
    logps = translator.score(sources, refs)
    lengths = [len(s.split()) for s in sources]

    def measures(idx: list[int]) -> dict:
        tokens = sum(len(refs[i].split()) + 1 for i in idx)
        return {"sentences": len(idx),
                "exact_match": sum(hyps[i] == refs[i] for i in idx) / len(idx),
                "bleu": sacrebleu.corpus_bleu([hyps[i] for i in idx],
                                              [[refs[i] for i in idx]]).score,
                "ppl": math.exp(-sum(logps[i] for i in idx) / tokens)}

    buckets = []
    for low in range(min(lengths) // width * width, max(lengths) + 1, width):
        idx = [i for i, n in enumerate(lengths) if low <= n < low + width]
        if idx:
            buckets.append({"low": low, "high": low + width, **measures(idx)})
    metrics = RunDir(run_dir).read_metrics()
    curve = [{"step": m["step"], "valid_ppl": m["valid_ppl"]} for m in metrics
             if "valid_ppl" in m]
    return {**measures(list(range(len(test)))), "by_length": buckets,
            "valid_ppl": min(c["valid_ppl"] for c in curve), "curve": curve,
            "train_seconds": max(m["elapsed_s"] for m in metrics)}  # wall, resumptions included


def run_model(task_dir: Path, pairs: dict, settings: dict, direction: str, seed: int,
              threads: int) -> dict:
    """One model's measures: read from `task_dir/results/`, or trained and measured there."""
    out = task_dir / "results" / f"{direction}-seed{seed}.json"
    if out.exists():
        log.info(f"{out}: done, not trained again")
        return json.loads(out.read_text(encoding="utf-8"))
    cpu = time.process_time()
    run_dir = task_dir / "runs" / f"{direction}-seed{seed}"
    train_model(task_dir / "data", run_dir, settings, direction, seed, threads)
    result = measure(run_dir, pairs["test"], settings["bucket_width"])
    # training and measuring, in this process (a resumed run: since it resumed)
    result["cpu_seconds"] = round(time.process_time() - cpu, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return result


# ------------------------------------------------------------------ the results


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def curve_nll(m: dict) -> float:
    """The mean validation NLL per token over a run's validations: the area under its
    learning curve, lower for a model that learnt sooner (where both end solved)."""
    return mean([math.log(c["valid_ppl"]) for c in m["curve"]])


# The table's measures of one model: (heading, value, format).
MEASURES = (("exact match", lambda m: 100 * m["exact_match"], "{:{sign}.1f}%"),
            ("test ppl", lambda m: m["ppl"], "{:{sign}.3f}"),
            ("curve NLL", curve_nll, "{:{sign}.3f}"))


def table(results: dict) -> list[str]:
    """Markdown: per (task, direction) each seed's test exact match, test perplexity and
    curve NLL (see `curve_nll`), and their means over seeds; per task the paired difference
    reversed - forward (same seed), and its mean."""
    seeds = sorted({s for t in results["tasks"].values() for d in t.values() for s in d}, key=int)
    head = [f"{name}, {label}" for name, _, _ in MEASURES
            for label in [*(f"seed {s}" for s in seeds), "mean"]]
    lines = ["| task | source | " + " | ".join(head) + " |",
             "|---|---|" + "---:|" * len(head)]

    def row(task: str, name: str, values: dict[str, tuple], sign: str = "") -> str:
        cells = []
        for i, (_, _, fmt) in enumerate(MEASURES):
            cells += [fmt.format(values[s][i], sign=sign) if s in values else "" for s in seeds]
            cells.append("**" + fmt.format(mean([v[i] for v in values.values()]), sign=sign)
                         + "**")
        return f"| {task} | {name} | " + " | ".join(cells) + " |"

    def values(by_seed: dict) -> dict[str, tuple]:
        return {s: tuple(value(m) for _, value, _ in MEASURES) for s, m in by_seed.items()}

    for task, runs in results["tasks"].items():
        for direction, by_seed in runs.items():
            lines.append(row(task, direction, values(by_seed)))
        paired = [s for s in seeds if all(s in runs.get(d, {}) for d in DIRECTIONS)]
        if paired:
            f, r = values(runs["forward"]), values(runs["reversed"])
            lines.append(row(task, "reversed − forward",
                             {s: tuple(b - a for a, b in zip(f[s], r[s])) for s in paired},
                             sign="+"))
    return lines


def plot(results: dict, out: Path) -> list[Path]:
    """One column per task: exact match by source length (top) and the validation
    perplexity by update (bottom), forward against reversed; thick lines the mean over
    seeds, thin ones each seed."""
    from matplotlib.ticker import FormatStrFormatter

    from seq2seq.analysis import figure, save_figure

    tasks = list(results["tasks"])
    fig, axes = figure(nrows=2, ncols=len(tasks), figsize=(4.6 * len(tasks), 7.4))
    axes = axes.reshape(2, len(tasks))
    for column, task in enumerate(tasks):
        top, bottom = axes[:, column]
        for direction, by_seed in results["tasks"][task].items():
            color = "C0" if direction == "forward" else "C3"
            runs = list(by_seed.values())
            x = [(b["low"] + b["high"] - 1) / 2 for b in runs[0]["by_length"]]
            ems = [[100 * b["exact_match"] for b in m["by_length"]] for m in runs]
            steps = [c["step"] for c in runs[0]["curve"]]
            ppls = [[c["valid_ppl"] for c in m["curve"]] for m in runs]
            for em, ppl in zip(ems, ppls):
                top.plot(x, em, color=color, lw=0.6, alpha=0.5)
                bottom.plot(steps, ppl, color=color, lw=0.6, alpha=0.5)
            label = f"{direction} source ({len(runs)} seeds)"
            top.plot(x, list(map(mean, zip(*ems))), "o-", color=color, label=label)
            bottom.plot(steps, list(map(mean, zip(*ppls))), "-", color=color, label=label)
        top.set(xlabel="source length (symbols)", ylabel="exact match (%)", ylim=(-3, 103),
                title=f"{task}: exact match (greedy, test)")
        bottom.set(xlabel="update", ylabel="validation perplexity", yscale="log",
                   title=f"{task}: validation perplexity")
        bottom.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        bottom.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend()
    return save_figure(fig, out)


# ------------------------------------------------------------------ the run

# Sentences per split, source lengths (symbols), symbols per side; Adam, its rate halved
# every half epoch from `decay_start` epochs (FULL: from step 3,906 of 6,000; QUICK: never);
# test exact match in buckets of `bucket_width` source lengths.
FULL = {"train": 100_000, "valid": 1_000, "test": 2_000, "min_len": 5, "max_len": 15,
        "vocab": 8, "steps": 6000, "batch_size": 64, "lr": 0.003, "decay_start": 2.5,
        "valid_every": 500, "model": {"embed_dim": 64, "hidden_size": 256, "num_layers": 1},
        "bucket_width": 5}
QUICK = {"train": 2_000, "valid": 200, "test": 300, "min_len": 3, "max_len": 12,
         "vocab": 8, "steps": 300, "batch_size": 32, "lr": 0.005, "decay_start": 1000.0,
         "valid_every": 50, "model": {"embed_dim": 32, "hidden_size": 64, "num_layers": 1},
         "bucket_width": 3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny tasks and models, about a minute (what the test runs)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                        help="model seeds: initial weights and batch order")
    parser.add_argument("--data-seed", type=int, default=1,
                        help="the tasks' data: mapping, sources, permutations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path,
                        help="data, models, per-model results (default work/synthetic, "
                             "work/synthetic-quick with --quick)")
    parser.add_argument("--out", type=Path, help="the results (default "
                        "experiments/synthetic.json, --work/synthetic.json with --quick)")
    parser.add_argument("--figure", help="plot prefix (.png and .svg); '' for none (default "
                        "experiments/figures/synthetic, --work/synthetic with --quick)")
    args = parser.parse_args(argv)
    args.work = args.work or ROOT / "work" / ("synthetic-quick" if args.quick else "synthetic")
    args.out = args.out or (args.work / "synthetic.json" if args.quick
                            else ROOT / "experiments" / "synthetic.json")
    if args.figure is None:
        args.figure = str(args.work / "synthetic" if args.quick
                          else ROOT / "experiments" / "figures" / "synthetic")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from seq2seq.cli import log_to_stderr
    from seq2seq.device import setup_process

    log_to_stderr()
    setup_process("train", torch.device("cpu"), args.threads)
    settings = {**(QUICK if args.quick else FULL), "data_seed": args.data_seed}
    start = time.perf_counter()
    tasks: dict[str, dict] = {}
    for task in args.tasks:
        pairs = prepare_task(task, settings, args.work / task)
        tasks[task] = {d: {} for d in args.directions}
        for seed in args.seeds:  # the pair of a seed one after the other
            for direction in args.directions:
                tasks[task][direction][str(seed)] = run_model(
                    args.work / task, pairs, settings, direction, seed, args.threads)
    results = {
        "command": " ".join(["python experiments/synthetic.py",
                             *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "settings": settings, "threads": args.threads, "tasks": tasks,
        "permutations": {n: permutation_of(n, args.data_seed)
                         for n in range(settings["min_len"], settings["max_len"] + 1)},
        "wall_seconds": round(time.perf_counter() - start),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print("\n".join(table(results)))
    if args.figure:
        print("\n".join(map(str, plot(results, Path(args.figure)))))
    print(f"wrote {args.out} in {results['wall_seconds']} s")


if __name__ == "__main__":
    main()
