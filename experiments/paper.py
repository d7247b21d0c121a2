"""The paper's claims tested as a reviewer would: `make paper`.

Source reversal, the paper's key trick, in two regimes, with paired seeds (forward-k and
reversed-k share their initial weights and batch order; only `model.reverse_source`
differs):

- **tatoeba**: competent models on short sentences. The demo's whole recipe and budget
  (`configs/tatoeba-cpu.yaml`, the bundled Tatoeba corpus prepared as `make demo` does),
  each direction (forward, words reversed, pieces reversed) with seeds 1-3: every model is
  the one a user of `make demo` gets, in one direction.
- **hansard**: long sentences. The whole Canadian Hansard training set (read from
  `--hansard`, never copied into the repository), `configs/hansard-cpu.yaml`, forward and
  words reversed, seeds 1-2, one epoch under one fixed learning-rate schedule. A run may
  be trained in stretches first (`seq2seq train ... optim.max_steps=N`, the command of its
  train task with a planned stop): each stretch resumes the last one bit-exactly.

For each model: test perplexity (per piece and per word) and BLEU at beam 1 and 12; per
regime, the sentence-level paired tests (`seq2seq.stats`: sacreBLEU's paired bootstrap, a
paired bootstrap of perplexity); on Hansard, BLEU and perplexity by source length, target
position and word rarity, an ensemble and n-best rescoring; Figure 2 from a forward and a
reversed model; the synthetic test of the mechanism with its controls
(`experiments/synthetic.py`).

Every step is a task that writes its numbers as JSON under `--results` (committed as they
come: a stopped run resumes, training from its last checkpoint and the rest from the JSON
already there); `--parallel` tasks run at once, one thread each. Then the report:
`experiments/RESULTS.md`, `experiments/RESULTS.json` and the plots in `experiments/figures/`.

    .venv/bin/python experiments/paper.py                     # every regime (~15 CPU-hours)
    .venv/bin/python experiments/paper.py --regimes tatoeba   # one regime, and the report
    .venv/bin/python experiments/paper.py --quick             # tiny models, tiny slices (~3 min)
    .venv/bin/python experiments/paper.py --report            # the report from the JSON only
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TATOEBA = ROOT / "data" / "tatoeba-en-fr"
PHRASES = ROOT / "examples" / "phrases.en"
# What each direction sets `model.reverse_source` to; "forward" is every comparison's control.
DIRECTIONS = {"forward": "none", "words": "words", "pieces": "pieces"}


@dataclass(frozen=True)
class Regime:
    """One regime of the experiment: stored with each of its results, which are redone if
    they were made with other settings."""

    name: str
    config: str  # repository-relative
    corpus: str  # "tatoeba" (bundled) or "hansard" (--hansard)
    directions: tuple[str, ...]
    seeds: tuple[int, ...]
    train_pairs: int | None = None  # the first N training pairs (a random sample); None: all
    test_sentences: int | None = None  # the first N test pairs; None: all
    vocab: int = 8_000
    max_len: int = 50  # pieces a training sentence may have (prepare's --max-len)
    workers: int = 2
    overrides: tuple[str, ...] = ()
    analyses: bool = False  # by length, position and rarity; ensemble; rescoring

    def runs(self) -> list[str]:
        """forward-seed1, words-seed1, ..., seed by seed: the pairs train side by side."""
        return [f"{d}-seed{k}" for k in self.seeds for d in self.directions]

    def data_settings(self) -> dict:
        return {k: getattr(self, k) for k in ("corpus", "train_pairs", "vocab", "max_len")}


TATOEBA_REGIME = Regime("tatoeba", "configs/tatoeba-cpu.yaml", "tatoeba",
                        ("forward", "words", "pieces"), (1, 2, 3))
HANSARD_REGIME = Regime("hansard", "configs/hansard-cpu.yaml", "hansard", ("forward", "words"),
                        (1, 2), test_sentences=3_000, max_len=80, workers=1, analyses=True)
REGIMES = {r.name: r for r in (TATOEBA_REGIME, HANSARD_REGIME)}
QUICK_OVERRIDES = ("model.embed_dim=24", "model.hidden_size=32", "optim.max_steps=30",
                   "train.valid_every=15", "train.log_every=5", "train.precision=fp32")
QUICK = {name: replace(r, seeds=(1, 2), train_pairs=600, test_sentences=40, vocab=400,
                       max_len=60, workers=1, overrides=QUICK_OVERRIDES)
         for name, r in REGIMES.items()}


@dataclass
class Task:
    name: str  # also its results file: RESULTS/<name>.json
    regime: str | None = None
    after: tuple[str, ...] = ()
    runs: tuple[str, ...] = field(default=())  # the models it reads


def rel(path) -> str:
    """`path` relative to the repository (`../shared/...` for the Hansard folder), so the
    report reads the same on any checkout."""
    return os.path.relpath(Path(path).resolve(), ROOT)


def plan(regimes: list[Regime], synthetic: bool = True) -> list[Task]:
    """Every task, in start order: each regime's training (forward and reversed of one seed
    side by side), then its evaluations."""
    tasks = []
    for r in regimes:
        runs, g = r.runs(), r.name
        tasks += [Task(f"{g}/train/{n}", g) for n in runs]
        tasks += [Task(f"{g}/model/{n}", g, (f"{g}/train/{n}",), (n,)) for n in runs]
        tasks.append(Task(f"{g}/paired", g, tuple(f"{g}/model/{n}" for n in runs),
                          tuple(runs)))
        pca = tuple(f"{d}-seed{r.seeds[0]}" for d in r.directions)
        tasks.append(Task(f"{g}/pca", g, tuple(f"{g}/train/{n}" for n in pca), pca))
        if r.analyses:
            pair = tuple(f"{r.directions[1]}-seed{k}" for k in r.seeds[:2])
            tasks.append(Task(f"{g}/ensemble", g, tuple(f"{g}/train/{n}" for n in pair), pair))
            lister = f"forward-seed{r.seeds[0]}"
            scorers = (lister, f"forward-seed{r.seeds[1]}", f"{r.directions[1]}-seed{r.seeds[0]}")
            tasks.append(Task(f"{g}/rescore", g, tuple(f"{g}/train/{n}" for n in scorers),
                              scorers))
    if synthetic:
        tasks.append(Task("synthetic"))
    return tasks


# ------------------------------------------------------------------ the tasks' work


class Paths:
    def __init__(self, work: Path, results: Path, hansard: Path):
        self.work, self.results, self.hansard = work, results, hansard

    def corpus(self, r: Regime) -> Path:
        return TATOEBA if r.corpus == "tatoeba" else self.hansard

    def data(self, r: Regime) -> Path:
        return self.work / r.name / "data"

    def run(self, r: Regime, name: str) -> Path:
        return self.work / r.name / "runs" / name

    def best(self, r: Regime, name: str) -> Path:
        from seq2seq.rundir import RunDir

        return RunDir(self.run(r, name)).best

    def hyps(self, r: Regime, name: str, beam: int) -> Path:
        return self.work / r.name / "hyps" / f"{name}.beam{beam}.txt"

    def result(self, task: str) -> Path:
        return self.results / f"{task}.json"


def prepare_data(p: Paths, r: Regime) -> None:
    """The regime's data directory: its corpus (the first `train_pairs` training pairs, or
    all), prepared with SentencePiece as its config's header says."""
    data, stamp = p.data(r), p.work / r.name / "data-settings.json"
    if (data / "meta.json").exists():
        made = json.loads(stamp.read_text()) if stamp.exists() else None
        if made != r.data_settings():
            raise SystemExit(f"paper: {data} was prepared with other settings ({made}); "
                             "give another --work or remove it")
        return
    from seq2seq.prepare import prepare
    from seq2seq.text import open_binary

    corpus = p.corpus(r)
    train = [corpus / f"train.{lang}.gz" for lang in ("en", "fr")]
    if r.train_pairs is not None:
        raw = p.work / r.name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for k, lang in enumerate(("en", "fr")):
            with open_binary(train[k]) as f, open(raw / f"train.{lang}", "wb") as out:
                for _, line in zip(range(r.train_pairs), f):
                    out.write(line)
            train[k] = raw / f"train.{lang}"
    prepare(*train, corpus / "valid.en", corpus / "valid.fr", data, src_vocab=r.vocab,
            tgt_vocab=r.vocab, tokenizer="sentencepiece", max_len=r.max_len,
            workers=r.workers, force=True)
    stamp.write_text(json.dumps(r.data_settings()) + "\n")


def train_command(p: Paths, r: Regime, name: str) -> list[str]:
    direction, seed = name.split("-seed")
    return ["seq2seq", "train", r.config, "--data", rel(p.data(r)), "--out",
            rel(p.run(r, name)), f"model.reverse_source={DIRECTIONS[direction]}",
            f"train.seed={seed}", "train.threads=1", *r.overrides]


def task_train(p: Paths, r: Regime, name: str) -> dict:
    argv = train_command(p, r, name)
    subprocess.run([sys.executable, "-m", "seq2seq", *argv[1:]], check=True, cwd=ROOT)
    from seq2seq.rundir import RunDir

    records = RunDir(p.run(r, name)).read_metrics()
    valid = [m for m in records if "valid_ppl" in m]
    train = [m for m in records if "ppl" in m]
    return {"run": name, "command": " ".join(map(shlex.quote, argv)),
            "steps": records[-1]["step"], "epochs": records[-1]["epoch"],
            "best_valid_ppl": min(m["valid_ppl"] for m in valid),
            "last_valid_ppl": valid[-1]["valid_ppl"],
            "wall_seconds": max(m.get("elapsed_s", 0) for m in records),
            "tgt_tok_s": statistics.median(m["tgt_tok_s"] for m in train) if train else None,
            "metrics": records}


def test_split(p: Paths, r: Regime) -> tuple[list[str], list[str]]:
    from seq2seq.text import read_lines

    corpus = p.corpus(r)
    sources = list(read_lines(corpus / "test.en"))[:r.test_sentences]
    refs = list(read_lines(corpus / "test.fr"))[:r.test_sentences]
    return sources, refs


def decode(translator, sources, refs, beam: int, nbest: int = 1):
    from seq2seq.evaluate import bleu_chrf

    start = time.perf_counter()
    out = translator.translate(sources, beam=beam, nbest=nbest)
    seconds = time.perf_counter() - start
    scores = bleu_chrf([t.text for t in out], refs)
    return out, {"beam": beam, "bleu": scores["bleu"], "chrf": scores["chrf"],
                 "seconds": round(seconds, 1), "signature": scores["bleu_signature"]}


BEAMS = (1, 12)  # the paper's greedy and its best beam, without a length penalty


def task_model(p: Paths, r: Regime, name: str) -> dict:
    """One model on the test split: perplexity per piece and per word (and each sentence's
    NLL, for the paired tests), BLEU at beam 1 and 12 (its translations kept under --work);
    with `analyses`, BLEU and perplexity by source length, target position and rarity."""
    from seq2seq import analysis
    from seq2seq.stats import perplexity_per_word
    from seq2seq.translator import Translator

    sources, refs = test_split(p, r)
    translator = Translator.load(p.best(r, name), device="cpu")
    beams, hyps = [], {}
    for beam in BEAMS:
        out, row = decode(translator, sources, refs, beam)
        beams.append(row)
        hyps[beam] = [t.text for t in out]
        path = p.hyps(r, name, beam)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(h + "\n" for h in hyps[beam]), encoding="utf-8")
    nlls = analysis.token_nlls(translator, sources, refs)
    sentence_nll = [float(x.sum()) for x in nlls]
    pieces = [len(x) for x in nlls]  # the target's pieces and </s>
    words = analysis.target_words(refs, lang="fr")
    total = sum(sentence_nll)
    result = {
        "run": name, "ppl": analysis.token_perplexity(nlls),
        "ppl_word": perplexity_per_word(total, sum(words), len(refs)),
        "beams": beams, "sentence_nll": [round(x, 4) for x in sentence_nll],
        "sentence_pieces": pieces, "sentence_words": words,
        "command": f"seq2seq evaluate --model {rel(p.best(r, name))} --src "
                   f"{rel(p.corpus(r) / 'test.en')} --ref {rel(p.corpus(r) / 'test.fr')} "
                   f"--beam 12",
    }
    if r.analyses:
        result.update(analysis_of(p, r, translator, sources, refs, nlls, hyps[12]))
    return result


def analysis_of(p: Paths, r: Regime, translator, sources, refs, nlls, hyps) -> dict:
    """Figure 3 (BLEU by source length and by the training-word rarity of the source) and
    the perplexity profile (by source length and target position)."""
    from seq2seq import analysis

    lengths = analysis.source_words(sources)
    rarity = analysis.mean_training_rank(sources, training_ranks(p, r), "en")
    edges = analysis.LENGTH_EDGES
    ranges = list(zip(edges[:-1], edges[1:]))
    return {
        "ppl_profile": analysis.nll_profile(nlls, lengths),
        "by_length": [asdict(b) for b in analysis.bleu_by_length(sources, hyps, refs,
                                                                 ranges=ranges)],
        "by_rarity": [asdict(b) for b in analysis.bleu_by_rarity(rarity, hyps, refs, 8)],
    }


def training_ranks(p: Paths, r: Regime) -> dict[str, int]:
    """The frequency rank of each Moses word of the regime's English training text (1 = most
    frequent), counted once and kept under --work."""
    from seq2seq import analysis

    cache = p.work / r.name / "train-word-ranks.json"
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    text = (p.work / r.name / "raw" / "train.en" if r.train_pairs is not None
            else p.corpus(r) / "train.en.gz")
    ranks = analysis.training_word_ranks(text, "en")
    tmp = cache.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(ranks), encoding="utf-8")
    os.replace(tmp, cache)
    return ranks


def comparisons(r: Regime) -> list[tuple[str, str]]:
    """(control, treated) directions: each reversal against forward, and the two reversals
    against each other when both ran."""
    pairs = [("forward", d) for d in r.directions if d != "forward"]
    if "words" in r.directions and "pieces" in r.directions:
        pairs.append(("pieces", "words"))
    return pairs


def translations(p: Paths, r: Regime, name: str, beam: int) -> list[str]:
    """The model task's translations of the test split, kept under --work; made again
    (the same decoding) where that folder is gone, e.g. in a fresh clone."""
    path = p.hyps(r, name, beam)
    if not path.exists():
        from seq2seq.translator import Translator

        sources, refs = test_split(p, r)
        out, _ = decode(Translator.load(p.best(r, name), device="cpu"), sources, refs, beam)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(t.text + "\n" for t in out), encoding="utf-8")
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def task_paired(p: Paths, r: Regime) -> dict:
    """The reversal's effects, paired: over seeds (each seed's difference, their mean and
    95% t interval) and over test sentences (sacreBLEU's paired bootstrap for BLEU, a
    paired bootstrap for perplexity), for every comparison of `comparisons`."""
    import numpy as np

    from seq2seq.stats import paired_bleu, paired_effect, paired_perplexity

    models = {n: json.loads(p.result(f"{r.name}/model/{n}").read_text(encoding="utf-8"))
              for n in r.runs()}
    _, refs = test_split(p, r)
    out = {}
    for control, treated in comparisons(r):
        a = [models[f"{control}-seed{k}"] for k in r.seeds]
        b = [models[f"{treated}-seed{k}"] for k in r.seeds]
        over_seeds = {
            "ppl": paired_effect([m["ppl"] for m in a], [m["ppl"] for m in b]),
            "ppl_word": paired_effect([m["ppl_word"] for m in a], [m["ppl_word"] for m in b]),
            "ppl_change_pct": paired_effect([0.0] * len(a), [
                100 * (y["ppl"] / x["ppl"] - 1) for x, y in zip(a, b)]),
        }
        nll = [np.array([m["sentence_nll"] for m in ms]) for ms in (a, b)]
        units = np.array(a[0]["sentence_pieces"])
        words = np.array(a[0]["sentence_words"]) + 1  # and </s>
        over_sentences = {"ppl": paired_perplexity(*nll, units),
                          "ppl_word": paired_perplexity(*nll, words)}
        for i, beam in enumerate(BEAMS):
            over_seeds[f"bleu{beam}"] = paired_effect([m["beams"][i]["bleu"] for m in a],
                                                      [m["beams"][i]["bleu"] for m in b])
            hyps = {d: [translations(p, r, f"{d}-seed{k}", beam) for k in r.seeds]
                    for d in (control, treated)}
            over_sentences[f"bleu{beam}"] = paired_bleu(
                sum(hyps[control], []), sum(hyps[treated], []), refs * len(r.seeds))
            over_sentences[f"bleu{beam}_per_seed"] = [
                paired_bleu(x, y, refs) for x, y in zip(hyps[control], hyps[treated])]
        out[f"{treated}-vs-{control}"] = {
            "control": control, "treated": treated, "seeds": list(r.seeds),
            "over_seeds": {k: v.to_dict() for k, v in over_seeds.items()},
            "over_sentences": {k: [x.to_dict() for x in v] if isinstance(v, list)
                               else v.to_dict() for k, v in over_sentences.items()},
        }
    return {"comparisons": out, "test_sentences": len(refs)}


def task_ensemble(p: Paths, r: Regime, names: tuple[str, ...]) -> dict:
    from seq2seq.translator import Translator

    sources, refs = test_split(p, r)
    translator = Translator.load([p.best(r, n) for n in names], device="cpu")
    models = " ".join(f"--model {rel(p.best(r, n))}" for n in names)
    return {"runs": list(names),
            "beams": [decode(translator, sources, refs, beam)[1] for beam in BEAMS],
            "command": f"seq2seq evaluate {models} --src {rel(p.corpus(r) / 'test.en')} "
                       f"--ref {rel(p.corpus(r) / 'test.fr')} --beam 12"}


def task_rescore(p: Paths, r: Regime, lister: str, rescorers: tuple[str, ...],
                 weight: float = 0.5) -> dict:
    """Table 2: `lister`'s 12-best list re-ranked by each rescorer's log p(T|S), averaged
    with the list's own score; BLEU before and after, and the oracle's."""
    import sacrebleu

    from seq2seq.analysis import NbestEntry, rescore
    from seq2seq.evaluate import bleu_chrf
    from seq2seq.translator import Translator

    sources, refs = test_split(p, r)
    out, _ = decode(Translator.load(p.best(r, lister), device="cpu"), sources, refs, 12, 12)
    groups = [[text for text, _ in t.nbest] for t in out]
    oracle = [max(g, key=lambda h, ref=ref: sacrebleu.sentence_bleu(h, [ref]).score)
              if g else "" for g, ref in zip(groups, refs)]
    result = {"list": f"{lister}, beam 12, 12-best", "weight": weight,
              "bleu_before": bleu_chrf([t.text for t in out], refs)["bleu"],
              "oracle_bleu": bleu_chrf(oracle, refs)["bleu"], "after": {}}
    for name in rescorers:
        entries = [NbestEntry(i, text, score) for i, t in enumerate(out)
                   for text, score in t.nbest]
        ranked = rescore(entries, sources, Translator.load(p.best(r, name), device="cpu"),
                         weight)
        best: dict[int, str] = {}
        for e in ranked:  # grouped by source, best combined score first
            best.setdefault(e.source, e.text)
        result["after"][name] = bleu_chrf([best.get(i, "") for i in range(len(out))],
                                          refs)["bleu"]
    test_en = rel(p.corpus(r) / "test.en")
    result["command"] = (
        f"seq2seq translate --model {rel(p.best(r, lister))} --beam 12 --nbest 12 --input "
        f"{test_en} > test.nbest && seq2seq rescore --model "
        f"{rel(p.best(r, rescorers[-1]))} --src {test_en} --nbest test.nbest "
        f"--weight {weight} --one-best")
    return result


def task_pca(p: Paths, r: Regime, names: tuple[str, ...]) -> dict:
    """Figure 2 from each direction's first seed: the same phrases through each encoder,
    each model's vectors projected on their own two principal components."""
    from seq2seq.analysis import pca_2d
    from seq2seq.text import read_lines
    from seq2seq.translator import Translator

    phrases = [line for line in read_lines(PHRASES) if line.strip()]
    points = {n: pca_2d(Translator.load(p.best(r, n), device="cpu").encode(phrases)).tolist()
              for n in names}
    return {"runs": list(names), "phrases": phrases, "points": points,
            "command": " && ".join(
                f"seq2seq plot pca --model {rel(p.best(r, n))} --phrases {rel(PHRASES)} "
                f"--out pca-{n}" for n in names)}


def task_synthetic(p: Paths, args: tuple[str, ...]) -> dict:
    out = p.work / "synthetic.json"
    argv = [sys.executable, "experiments/synthetic.py", *args, "--work",
            rel(p.work / "synthetic"), "--out", rel(out), "--figure", ""]
    subprocess.run(argv, check=True, cwd=ROOT)
    return json.loads(out.read_text(encoding="utf-8"))


def do_task(p: Paths, regimes: dict[str, Regime], synthetic: tuple[str, ...],
            name: str) -> None:
    """Run one task in this process (one thread) and write its JSON."""
    import torch

    from seq2seq.device import setup_process

    task = {t.name: t for t in plan(list(regimes.values()))}[name]
    r = regimes.get(task.regime)
    kind = name.split("/")[1] if r else name
    if kind not in ("train", "synthetic"):  # those run a child that tunes itself
        setup_process("decode", torch.device("cpu"), 1)  # as `seq2seq evaluate` would
    start = time.perf_counter()
    if kind == "train":
        result = task_train(p, r, task.name.rsplit("/", 1)[1])
    elif kind == "model":
        result = task_model(p, r, task.runs[0])
    elif kind == "paired":
        result = task_paired(p, r)
    elif kind == "ensemble":
        result = task_ensemble(p, r, task.runs)
    elif kind == "rescore":
        result = task_rescore(p, r, task.runs[0], task.runs[1:])
    elif kind == "pca":
        result = task_pca(p, r, task.runs)
    else:
        result = task_synthetic(p, synthetic)
    result.update(task=name, task_seconds=round(time.perf_counter() - start, 1),
                  settings=settings_of(regimes, synthetic, task), machine=machine(),
                  date=time.strftime("%Y-%m-%d"))
    path = p.result(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------ running the plan


def settings_of(regimes: dict[str, Regime], synthetic: tuple[str, ...], task: Task) -> dict:
    """What a task's result depends on: its regime, or the synthetic experiment's
    arguments (as JSON would read them back)."""
    made = asdict(regimes[task.regime]) if task.regime else {"synthetic": synthetic}
    return json.loads(json.dumps(made))


def done(p: Paths, regimes: dict[str, Regime], synthetic: tuple[str, ...], task: Task) -> bool:
    path = p.result(task.name)
    if not path.exists():
        return False
    return (json.loads(path.read_text(encoding="utf-8")).get("settings")
            == settings_of(regimes, synthetic, task))


def run_plan(p: Paths, regimes: dict[str, Regime], synthetic: tuple[str, ...],
             argv: list[str], parallel: int, only: list[str]) -> None:
    """Start each task (of the regimes `only`, and the synthetic one if named) whose inputs
    are done, `parallel` at a time, as a child process.

    Each task runs in a session of its own; if one fails, or this process is stopped
    (Ctrl-C, SIGTERM), every running task's whole group gets SIGTERM: a training run saves
    its last.pt and stops, and the next `paper.py` resumes it."""
    tasks = plan([regimes[g] for g in regimes if g in only], "synthetic" in only)
    for g in only:
        if g in regimes:
            prepare_data(p, regimes[g])
    pending = [t for t in tasks if not done(p, regimes, synthetic, t)]
    by_name = {t.name: t for t in tasks}
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
            ready = [t for t in pending
                     if all(done(p, regimes, synthetic, by_name[a]) for a in t.after)]
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
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                  if line.startswith("flags")), [])
    kind = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags
            else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "x86-64")
    import torch

    return (f"{os.cpu_count()} cores ({cpu}, {kind}), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models on tiny slices, every task and the report (CI)")
    parser.add_argument("--regimes", nargs="+", choices=[*REGIMES, "synthetic"],
                        default=[*REGIMES, "synthetic"],
                        help="what to run (default all; the report covers every result)")
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
    regimes = QUICK if args.quick else REGIMES
    synthetic = ("--quick",) if args.quick else ()
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
        return do_task(p, regimes, synthetic, args.task)
    if "hansard" in args.regimes:
        for name in ("train.en.gz", "train.fr.gz", "test.en", "test.fr", "valid.en",
                     "valid.fr"):
            if not (p.hansard / name).is_file():
                parser.error(f"{p.hansard / name}: not found (give the Hansard folder with "
                             "--hansard; see ../shared/data/hansard-en-fr/README.md)")
    if not args.report:
        child = [a for a in argv if a != "--report"]
        run_plan(p, regimes, synthetic, child, args.parallel, args.regimes)
    from report import write_report

    command = " ".join(["python experiments/paper.py", *(["--quick"] if args.quick else []),
                        *(f"--{k} {shlex.quote(rel(v))}" for k, v in paths.items())])
    tasks = plan(list(regimes.values()))
    write_report(p, regimes, tasks, args.out, args.figures, command,
                 None if args.quick else ROOT / "experiments" / "discussion.md")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
