"""The paper's claims on trained models and long sentences: `make paper`.

On a random sample of the Canadian Hansard (English -> French, ~19 words a sentence; read
from `--hansard`, never copied into the repository), one recipe (`configs/hansard-cpu.yaml`)
trains forward-source models (seeds 1, 2) and reversed-source models (seeds 1, 2, 3) to the
end of their learning-rate schedule. Then, on the Hansard test split:

- Table 1's key trick: test perplexity and BLEU (beam 12) forward vs reversed, with the
  seed spread, and BLEU by source length (Figure 3, left) for both directions;
- beam 1 / 2 / 12, ensembles of 2 and 3 reversed models;
- Table 2: an n-best list rescored with a forward and with a reversed model, and its oracle;
- Figure 3, right (BLEU by word rarity), Figure 2 (PCA of the paper's phrases);
- the synthetic task of `experiments/synthetic.py` (the mechanism, isolated).

Every step is a task that writes its numbers as JSON under `--results` (committed as they
come: a stopped run resumes, training from its last checkpoint and the rest from the JSON
already there); `--parallel` tasks run at once, one thread each. Then the report:
`experiments/RESULTS.md`, `experiments/RESULTS.json` and the plots in `experiments/figures/`.

    .venv/bin/python experiments/paper.py            # the documented run (~2.5 h, 2 cores)
    .venv/bin/python experiments/paper.py --quick    # tiny models on tiny slices (~2 min)
    .venv/bin/python experiments/paper.py --report   # the report again from the JSON only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "hansard-cpu.yaml"
PHRASES = ROOT / "examples" / "phrases.en"
# Figure 3, left: source length in words, the buckets the paper's plot spans.
LENGTH_EDGES = (1, 10, 15, 20, 25, 30, 35, 40, 50, 101)
SPLIT_DIRECTIONS = ("forward", "reversed")


@dataclass
class Settings:
    """What a run of the experiment is; stored with every result, which is redone if it
    was made with other settings."""

    train_pairs: int = 72_000
    test_sentences: int = 3_000
    vocab: int = 8_000
    max_len: int = 80
    forward_seeds: tuple[int, ...] = (1, 2)
    reversed_seeds: tuple[int, ...] = (1, 2, 3)
    overrides: tuple[str, ...] = ()
    synthetic: tuple[str, ...] = ()  # arguments of experiments/synthetic.py
    quick: bool = False


QUICK = Settings(train_pairs=600, test_sentences=40, vocab=400, max_len=60, quick=True,
                 overrides=("model.embed_dim=24", "model.hidden_size=32",
                            "optim.max_steps=30", "train.valid_every=15",
                            "train.log_every=5"),
                 synthetic=("--quick",))


@dataclass
class Task:
    name: str  # also its results file: RESULTS/<name>.json
    after: tuple[str, ...] = ()
    runs: tuple[str, ...] = field(default=())  # the models it reads


def rel(path) -> str:
    """`path` relative to the repository (`../shared/...` for the Hansard folder), so the
    report reads the same on any checkout."""
    return os.path.relpath(Path(path).resolve(), ROOT)


def run_names(s: Settings) -> list[str]:
    return ([f"forward-seed{k}" for k in s.forward_seeds]
            + [f"reversed-seed{k}" for k in s.reversed_seeds])


def plan(s: Settings) -> list[Task]:
    """Every task, training first (forward and reversed side by side), in start order."""
    fwd = [f"forward-seed{k}" for k in s.forward_seeds]
    rev = [f"reversed-seed{k}" for k in s.reversed_seeds]
    order = [name for pair in zip(fwd, rev) for name in pair]
    order += [n for n in fwd + rev if n not in order]
    tasks = [Task(f"train/{n}") for n in order]
    tasks += [Task(f"model/{n}", (f"train/{n}",), (n,)) for n in order]
    for k in (2, 3):
        tasks.append(Task(f"ensemble/{k}", tuple(f"train/{n}" for n in rev[:k]), tuple(rev[:k])))
    tasks.append(Task("rescore", (f"train/{fwd[0]}", f"train/{fwd[1]}", f"train/{rev[0]}"),
                      (fwd[0], fwd[1], rev[0])))
    tasks.append(Task("pca", (f"train/{rev[0]}",), (rev[0],)))
    tasks.append(Task("synthetic"))
    return tasks


# ------------------------------------------------------------------ the tasks' work


class Paths:
    def __init__(self, work: Path, results: Path, hansard: Path):
        self.work, self.results, self.hansard = work, results, hansard
        self.raw, self.data = work / "raw", work / "hansard-data"

    def run(self, name: str) -> Path:
        return self.work / "runs" / name

    def best(self, name: str) -> Path:
        return self.run(name) / "best.pt"

    def result(self, task: str) -> Path:
        return self.results / f"{task}.json"


def prepare_data(p: Paths, s: Settings) -> None:
    """The first `train_pairs` training pairs (the file is shuffled: a random sample),
    prepared as configs/hansard-cpu.yaml says."""
    stamp = p.work / "settings.json"
    if (p.data / "meta.json").exists():
        made = json.loads(stamp.read_text()) if stamp.exists() else None
        if made != json.loads(json.dumps(asdict(s))):
            raise SystemExit(f"paper: {p.work} holds a run of other settings; give another "
                             "--work or remove it")
        return
    from seq2seq.prepare import prepare
    from seq2seq.text import open_binary

    p.raw.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "fr"):
        with open_binary(p.hansard / f"train.{lang}.gz") as f, \
                open(p.raw / f"train.{lang}", "wb") as out:
            for _, line in zip(range(s.train_pairs), f):
                out.write(line)
    prepare(p.raw / "train.en", p.raw / "train.fr", p.hansard / "valid.en",
            p.hansard / "valid.fr", p.data, src_vocab=s.vocab, tgt_vocab=s.vocab,
            tokenizer="sentencepiece", max_len=s.max_len, workers=1, force=True)
    stamp.write_text(json.dumps(asdict(s)) + "\n")


def train_command(p: Paths, s: Settings, name: str) -> list[str]:
    direction, seed = name.split("-seed")
    return ["seq2seq", "train", rel(CONFIG), "--data", rel(p.data), "--out", rel(p.run(name)),
            f"train.seed={seed}", f"model.reverse_source={str(direction == 'reversed').lower()}",
            "train.threads=1", *s.overrides]


def task_train(p: Paths, s: Settings, name: str) -> dict:
    argv = train_command(p, s, name)
    subprocess.run([sys.executable, "-m", "seq2seq", *argv[1:]], check=True, cwd=ROOT)
    from seq2seq.analysis import read_metrics

    records = read_metrics(p.run(name))
    valid = [r for r in records if "valid_ppl" in r]
    train = [r for r in records if "ppl" in r]
    return {"run": name, "command": " ".join(map(shlex.quote, argv)),
            "steps": records[-1]["step"], "epochs": records[-1]["epoch"],
            "best_valid_ppl": min(r["valid_ppl"] for r in valid),
            "last_valid_ppl": valid[-1]["valid_ppl"],
            "wall_seconds": max(r.get("elapsed_s", 0) for r in records),
            "tgt_tok_s": statistics.median(r["tgt_tok_s"] for r in train) if train else None,
            "metrics": records}


def test_split(p: Paths, s: Settings) -> tuple[list[str], list[str]]:
    from seq2seq.text import read_lines

    sources = list(read_lines(p.hansard / "test.en"))[:s.test_sentences]
    refs = list(read_lines(p.hansard / "test.fr"))[:s.test_sentences]
    return sources, refs


def word_ranks(p: Paths) -> dict[str, int]:
    """Frequency rank of each training-source word (Moses tokens, 1 = most frequent)."""
    from seq2seq.text import Tokenizer, read_lines

    tok = Tokenizer("moses", "en")
    counts = Counter(w for line in read_lines(p.raw / "train.en") for w in tok.tokenize(line))
    return {w: rank for rank, (w, _) in enumerate(counts.most_common(), start=1)}


def decode(translator, sources, refs, beam: int, nbest: int = 1):
    from seq2seq.evaluate import bleu_chrf

    start = time.perf_counter()
    out = translator.translate(sources, beam=beam, nbest=nbest)
    seconds = time.perf_counter() - start
    scores = bleu_chrf([t.text for t in out], refs)
    return out, {"beam": beam, "bleu": scores["bleu"], "chrf": scores["chrf"],
                 "seconds": round(seconds, 1), "signature": scores["bleu_signature"]}


# Where in a sentence reversal should matter: the target position (in pieces, </s> last).
POSITION_EDGES = (1, 4, 8, 12, 16, 21, 31, 41, 61, 201)


def nll_profile(translator, sources: list[str], refs: list[str]) -> dict[str, list[dict]]:
    """Test perplexity (per target piece, </s> included) per bucket of source length in
    words (LENGTH_EDGES) and per target position (POSITION_EDGES), teacher-forced."""
    import math

    import torch

    from seq2seq.analysis import source_words

    words = source_words(sources)  # Figure 3's length measure
    src_ids, tgt_ids = translator.source_ids(sources), translator.target_ids(refs)
    sums = {"by_length": [[0.0, 0] for _ in LENGTH_EDGES[1:]],
            "by_position": [[0.0, 0] for _ in POSITION_EDGES[1:]]}
    order = sorted(range(len(sources)), key=lambda i: len(src_ids[i]))
    for k in range(0, len(order), 64):
        rows = order[k:k + 64]
        with torch.inference_mode():
            logp = translator.ensemble.token_logprobs([src_ids[i] for i in rows],
                                                      [tgt_ids[i] for i in rows]).tolist()
        for i, row in zip(rows, logp):
            nll = [-x for x in row[:len(tgt_ids[i]) + 1]]  # the pieces and </s>
            at = _bucket(words[i], LENGTH_EDGES)  # None past the last edge: not counted
            if at is not None:
                sums["by_length"][at][0] += sum(nll)
                sums["by_length"][at][1] += len(nll)
            for pos, x in enumerate(nll, start=1):
                b = _bucket(pos, POSITION_EDGES)
                if b is not None:
                    sums["by_position"][b][0] += x
                    sums["by_position"][b][1] += 1
    out = {}
    for key, edges in (("by_length", LENGTH_EDGES), ("by_position", POSITION_EDGES)):
        out[key] = [{"low": lo, "high": hi, "tokens": n,
                     "ppl": math.exp(total / n) if n else float("nan")}
                    for (lo, hi), (total, n) in zip(zip(edges[:-1], edges[1:]), sums[key])]
    return out


def _bucket(value: float, edges) -> int | None:
    """The index of the [edges[k], edges[k + 1]) range holding `value`, or None."""
    return next((k for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))
                 if lo <= value < hi), None)


def task_model(p: Paths, s: Settings, name: str) -> dict:
    """One model: test perplexity, BLEU at beam 1 / 2 / 12, and BLEU by source length and
    by word rarity of its beam-12 translations."""
    import numpy as np

    from seq2seq.analysis import bleu_by_bucket, bleu_by_length, equal_count_buckets
    from seq2seq.evaluate import perplexity
    from seq2seq.text import Tokenizer
    from seq2seq.translator import Translator

    sources, refs = test_split(p, s)
    translator = Translator.load(p.best(name), device="cpu")
    rows = {}
    for beam in (1, 2, 12):
        out, rows[beam] = decode(translator, sources, refs, beam)
    hyps = [t.text for t in out]  # beam 12
    (p.work / "hyps").mkdir(parents=True, exist_ok=True)
    (p.work / "hyps" / f"{name}.beam12.fr").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    tok = Tokenizer("moses", "en")
    words = [tok.tokenize(line) for line in sources]
    ranks = word_ranks(p)
    unknown = len(ranks) + 1
    rarity = [float(np.mean([ranks.get(w, unknown) for w in ws])) if ws else 0.0 for ws in words]
    return {
        "run": name, "ppl": perplexity(translator, sources, refs),
        "ppl_profile": nll_profile(translator, sources, refs),
        "beams": [rows[b] for b in (1, 2, 12)],
        "by_length": [asdict(b) for b in bleu_by_length(
            sources, hyps, refs, ranges=list(zip(LENGTH_EDGES[:-1], LENGTH_EDGES[1:])))],
        "by_rarity": [asdict(b) for b in bleu_by_bucket(rarity, hyps, refs,
                                                        equal_count_buckets(rarity, 8))],
        "command": f"seq2seq evaluate --model {rel(p.best(name))} --src "
                   f"{rel(p.hansard / 'test.en')} --ref {rel(p.hansard / 'test.fr')} --beam 12",
    }


def task_ensemble(p: Paths, s: Settings, names: tuple[str, ...]) -> dict:
    from seq2seq.translator import Translator

    sources, refs = test_split(p, s)
    translator = Translator.load([p.best(n) for n in names], device="cpu")
    models = " ".join(f"--model {rel(p.best(n))}" for n in names)
    return {"runs": list(names),
            "beams": [decode(translator, sources, refs, beam)[1] for beam in (1, 12)],
            "command": f"seq2seq evaluate {models} --src {rel(p.hansard / 'test.en')} --ref "
                       f"{rel(p.hansard / 'test.fr')} --beam 12"}


def task_rescore(p: Paths, s: Settings, lister: str, rescorers: tuple[str, ...],
                 weight: float = 0.5) -> dict:
    """Table 2: `lister`'s 12-best list re-ranked by each rescorer's log p(T|S), averaged
    with the list's own score; BLEU before and after, and the oracle's."""
    import sacrebleu

    from seq2seq.analysis import NbestEntry, rescore
    from seq2seq.evaluate import bleu_chrf
    from seq2seq.translator import Translator

    sources, refs = test_split(p, s)
    out, _ = decode(Translator.load(p.best(lister), device="cpu"), sources, refs, 12, 12)
    groups = [[text for text, _ in t.nbest] for t in out]
    oracle = [max(g, key=lambda h, r=ref: sacrebleu.sentence_bleu(h, [r]).score) if g else ""
              for g, ref in zip(groups, refs)]
    result = {"list": f"{lister}, beam 12, 12-best", "weight": weight,
              "bleu_before": bleu_chrf([t.text for t in out], refs)["bleu"],
              "oracle_bleu": bleu_chrf(oracle, refs)["bleu"], "after": {}}
    for name in rescorers:
        entries = [NbestEntry(i, text, score) for i, t in enumerate(out)
                   for text, score in t.nbest]
        ranked = rescore(entries, sources, Translator.load(p.best(name), device="cpu"), weight)
        best: dict[int, str] = {}
        for e in ranked:  # grouped by source, best combined score first
            best.setdefault(e.source, e.text)
        result["after"][name] = bleu_chrf([best.get(i, "") for i in range(len(out))],
                                          refs)["bleu"]
    result["command"] = (
        f"seq2seq translate --model {rel(p.best(lister))} --beam 12 --nbest 12 --input "
        f"{rel(p.hansard / 'test.en')} > test.nbest && seq2seq rescore --model "
        f"{rel(p.best(rescorers[-1]))} --src {rel(p.hansard / 'test.en')} --nbest test.nbest "
        f"--weight {weight} --one-best")
    return result


def task_pca(p: Paths, s: Settings, name: str) -> dict:
    from seq2seq.analysis import pca_2d
    from seq2seq.text import read_lines
    from seq2seq.translator import Translator

    phrases = [line for line in read_lines(PHRASES) if line.strip()]
    points = pca_2d(Translator.load(p.best(name), device="cpu").encode(phrases))
    return {"run": name, "phrases": phrases, "points": points.tolist(),
            "command": f"seq2seq plot pca --model {rel(p.best(name))} --phrases "
                       f"{rel(PHRASES)} --out experiments/figures/pca"}


def task_synthetic(p: Paths, s: Settings) -> dict:
    out = p.work / "synthetic.json"
    argv = [sys.executable, "experiments/synthetic.py", *s.synthetic, "--work",
            rel(p.work / "synthetic"), "--out", rel(out), "--figure", ""]
    subprocess.run(argv, check=True, cwd=ROOT)
    return json.loads(out.read_text(encoding="utf-8"))


def do_task(p: Paths, s: Settings, name: str) -> None:
    """Run one task in this process (one thread) and write its JSON."""
    import torch

    from seq2seq.device import setup_process

    task = {t.name: t for t in plan(s)}[name]
    kind, _, arg = name.partition("/")
    if kind not in ("train", "synthetic"):  # those run a child that tunes itself
        setup_process("decode", torch.device("cpu"), 1)  # as `seq2seq evaluate` would
    start = time.perf_counter()
    if kind == "train":
        result = task_train(p, s, arg)
    elif kind == "model":
        result = task_model(p, s, arg)
    elif kind == "ensemble":
        result = task_ensemble(p, s, task.runs)
    elif kind == "rescore":
        result = task_rescore(p, s, task.runs[0], task.runs[1:])
    elif kind == "pca":
        result = task_pca(p, s, arg or task.runs[0])
    else:
        result = task_synthetic(p, s)
    result.update(task=name, task_seconds=round(time.perf_counter() - start, 1),
                  paper_settings=asdict(s), machine=machine(), date=time.strftime("%Y-%m-%d"))
    path = p.result(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------ running the plan


def done(p: Paths, s: Settings, task: str) -> bool:
    path = p.result(task)
    if not path.exists():
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("paper_settings") == \
        json.loads(json.dumps(asdict(s)))


def run_plan(p: Paths, s: Settings, argv: list[str], parallel: int) -> None:
    """Start each task whose inputs are done, `parallel` at a time, as a child process.

    Each task runs in a session of its own; if one fails, or this process is stopped
    (Ctrl-C, SIGTERM), every running task's whole group gets SIGTERM: a training run saves
    its last.pt and stops, and the next `paper.py` resumes it."""
    prepare_data(p, s)
    pending = [t for t in plan(s) if not done(p, s, t.name)]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        while pending or running:
            for name, (proc, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    raise SystemExit(f"paper: task {name} failed (exit {proc.returncode})")
                print(f"paper: {name} done in {time.perf_counter() - started:.0f} s",
                      flush=True)
            ready = [t for t in pending if all(done(p, s, a) for a in t.after)]
            while ready and len(running) < parallel:
                task = ready.pop(0)
                pending.remove(task)
                print(f"paper: starting {task.name}", flush=True)
                proc = subprocess.Popen([sys.executable, __file__, *argv, "--task", task.name],
                                        start_new_session=True)
                running[task.name] = (proc, time.perf_counter())
            if not ready and not running and pending:
                raise SystemExit(f"paper: {pending[0].name} waits for a task that did not run")
            time.sleep(2)
    finally:
        for proc, _ in running.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in running.values():
            proc.wait()


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    import torch

    return (f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models on tiny slices, every task and the report (CI)")
    parser.add_argument("--hansard", type=Path, default=ROOT.parent / "shared" / "data" /
                        "hansard-en-fr", help="the Hansard folder (train.{en,fr}.gz, "
                        "valid.*, test.*; default ../shared/data/hansard-en-fr)")
    parser.add_argument("--work", type=Path, help="data, checkpoints and translations (not "
                        "committed; default work/paper, with --quick work/paper-quick)")
    parser.add_argument("--results", type=Path,
                        help="the tasks' JSON (default experiments/results, committed)")
    parser.add_argument("--out", type=Path, help="default experiments/RESULTS.md")
    parser.add_argument("--figures", type=Path, help="default experiments/figures")
    parser.add_argument("--parallel", type=int, default=2, help="tasks at once (2)")
    parser.add_argument("--report", action="store_true", help="only write the report")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from seq2seq.cli import log_to_stderr

    log_to_stderr()
    settings = QUICK if args.quick else Settings()
    # The paths given, for the report's command line (relative: no path of one machine).
    paths = {k: getattr(args, k) for k in ("work", "results", "out", "figures")
             if getattr(args, k) is not None}
    if args.hansard != parser.get_default("hansard"):
        paths["hansard"] = args.hansard
    home = ROOT / "work" / "paper-quick" if args.quick else ROOT / "experiments"
    args.work = args.work or ROOT / "work" / ("paper-quick" if args.quick else "paper")
    args.results = args.results or home / "results"
    args.out = args.out or home / "RESULTS.md"
    args.figures = args.figures or home / "figures"
    p = Paths(args.work.resolve(), args.results.resolve(), args.hansard.resolve())
    if args.task:
        return do_task(p, settings, args.task)
    for name in ("train.en.gz", "train.fr.gz", "test.en", "test.fr", "valid.en", "valid.fr"):
        if not (p.hansard / name).is_file():
            parser.error(f"{p.hansard / name}: not found (give the Hansard folder with "
                         "--hansard; see ../shared/data/hansard-en-fr/README.md)")
    if not args.report:
        run_plan(p, settings, [a for a in argv if a != "--report"], args.parallel)
    from report import write_report

    command = " ".join(["python experiments/paper.py", *(["--quick"] if args.quick else []),
                        *(f"--{k} {shlex.quote(rel(v))}" for k, v in paths.items())])
    write_report(p, settings, plan(settings), args.out, args.figures, command,
                 None if args.quick else ROOT / "experiments" / "discussion.md")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
