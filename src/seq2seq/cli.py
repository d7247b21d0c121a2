"""The `seq2seq` command: a verb per step of the pipeline (prepare, train, translate, score,
evaluate, rescore, average, plot, serve). It parses arguments, calls the library with the
same names, prints the results, and turns the library's errors into one-line messages and
exit codes; the work itself is the library's."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from itertools import islice
from pathlib import Path

from seq2seq.config import (
    DECODE_PRECISIONS,
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    DEVICES,
    PRECISION_HELP,
    SHORTLIST_FREQUENT,
    SHORTLIST_ITERATIONS,
    SHORTLIST_TRANSLATIONS,
)
from seq2seq.errors import DataError, Seq2SeqError, TrainingStopped, check_integer
from seq2seq.files import check_not_an_input
from seq2seq.rundir import METRICS

EXAMPLES = {
    "prepare": "seq2seq prepare --train-src data/tatoeba-en-fr/train.en.gz "
               "--train-tgt data/tatoeba-en-fr/train.fr.gz --valid-src data/tatoeba-en-fr/valid.en "
               "--valid-tgt data/tatoeba-en-fr/valid.fr --out work/data --src-vocab 20000",
    "train": "seq2seq train configs/tatoeba-cpu.yaml --data work/data --out runs/tatoeba "
             "optim.max_steps=2000",
    "translate": "echo 'How are you?' | seq2seq translate --model runs/tatoeba/best.pt --beam 12",
    "score": "seq2seq score --model runs/tatoeba/best.pt --src test.en --tgt test.fr",
    "evaluate": "seq2seq evaluate --model runs/tatoeba/best.pt --src data/tatoeba-en-fr/test.en "
                "--ref data/tatoeba-en-fr/test.fr --beam 12 --json",
    "average": "seq2seq average --last 5 runs/tatoeba --out runs/tatoeba/average.pt",
    "rescore": "seq2seq rescore --model runs/tatoeba/best.pt --src test.en --nbest test.nbest "
               "--weight 0.5 --one-best",
    "plot": "seq2seq plot length --model runs/tatoeba/best.pt --src data/tatoeba-en-fr/test.en "
            "--ref data/tatoeba-en-fr/test.fr --out plots/length\n"
            "  seq2seq plot rarity --measure train-words --train-src "
            "data/tatoeba-en-fr/train.en.gz --model runs/tatoeba/best.pt --src "
            "data/tatoeba-en-fr/test.en --ref data/tatoeba-en-fr/test.fr --out plots/rarity\n"
            "  seq2seq plot profile --model runs/tatoeba/best.pt --src data/tatoeba-en-fr/test.en "
            "--ref data/tatoeba-en-fr/test.fr --out plots/profile\n"
            "  seq2seq plot curves runs/forward runs/reversed --out plots/curves",
    "serve": "seq2seq serve --model runs/tatoeba/best.pt --port 8000  "
             "# then open http://127.0.0.1:8000/",
    "shortlist": "seq2seq shortlist --data work/data --out runs/tatoeba/shortlist.pt\n"
                 "  seq2seq translate --model runs/tatoeba/best.pt --shortlist "
                 "runs/tatoeba/shortlist.pt --precision int8 < test.en",
}
INPUT_CHUNK = 2000  # lines translated at a time, so memory does not grow with the input


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.verb == "train":
        # key=value overrides may stand anywhere, also after the options.
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    log_to_stderr()
    try:
        # uvicorn handles SIGTERM itself (a graceful shutdown)
        with nullcontext() if args.verb == "serve" else _sigterm_unwinds():
            return args.run(args) or 0
    except _Terminated:
        return 128 + signal.SIGTERM
    except TrainingStopped as err:
        print(f"seq2seq {args.verb}: {err}", file=sys.stderr)
        return err.exit_code
    except Seq2SeqError as err:
        print(f"seq2seq {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be written, a full disk, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"seq2seq {args.verb}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _Terminated(BaseException):
    """SIGTERM arrived (a BaseException, so that no `except Exception` stops it)."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM raises _Terminated, as Ctrl-C raises KeyboardInterrupt:
    the verb unwinds and removes its temporary files and folders on the way out (by
    default SIGTERM ends the process on the spot and leaves them). Only the main thread
    may set a handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum, _frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2seq",
        description="Deep-LSTM sequence-to-sequence learning (Sutskever et al., 2014).")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str, run) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help,
                             epilog=f"example:\n  {EXAMPLES[name]}",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=run)
        return p

    p = verb("prepare", "Tokenize, build vocabularies and binarize a parallel corpus.",
             cmd_prepare)
    for name in ("train-src", "train-tgt", "valid-src", "valid-tgt"):
        p.add_argument(f"--{name}", required=True, metavar="FILE",
                       help="raw text, one sentence per line (.gz/.xz read as compressed)")
    p.add_argument("--out", required=True, metavar="DIR", help="data directory to create")
    p.add_argument("--src-vocab", type=int, default=160_000, metavar="N",
                   help="source words kept (default 160000, the paper's)")
    p.add_argument("--tgt-vocab", type=int, default=80_000, metavar="N",
                   help="target words kept (default 80000, the paper's)")
    p.add_argument("--tokenizer", choices=("moses", "space", "sentencepiece"), default="moses")
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--max-len", type=int, default=50, metavar="N",
                   help="drop training pairs with a side longer than N tokens (default 50)")
    p.add_argument("--src-lang", help="Moses language of the source (default: file suffix)")
    p.add_argument("--tgt-lang", help="Moses language of the target (default: file suffix)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="tokenizer processes (default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    _progress_arg(p)

    p = verb("train", "Train a model (resumes if the run directory has a checkpoint).", cmd_train)
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. optim.lr=0.5")
    p.add_argument("--data", metavar="DIR", help="data directory made by `seq2seq prepare`")
    p.add_argument("--out", metavar="DIR", help=f"run directory (checkpoints, {METRICS})")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model, print its parameter counts and exit")
    p.add_argument("--device", choices=DEVICES,
                   help="where to train (the same as train.device=...)")

    p = verb("translate", "Translate raw text (stdin or --input) to raw text.", cmd_translate)
    _model_args(p)
    p.add_argument("--input", metavar="FILE", help="default: stdin")
    p.add_argument("--output", metavar="FILE", help="default: stdout")
    p.add_argument("--nbest", type=int, default=1, metavar="N",
                   help="with N > 1, print Moses n-best lines: index ||| text ||| score")
    _shortlist_arg(p)
    _progress_arg(p)

    p = verb("score", "Print log p(T|S) of each sentence pair.", cmd_score)
    _model_args(p, decoding=False)
    p.add_argument("--src", required=True, metavar="FILE")
    p.add_argument("--tgt", required=True, metavar="FILE")
    _progress_arg(p)

    p = verb("evaluate", "Translate a test set; print BLEU, chrF, tokenized BLEU, perplexity.",
             cmd_evaluate)
    _model_args(p)
    p.add_argument("--src", required=True, metavar="FILE")
    p.add_argument("--ref", required=True, metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--hyps", metavar="FILE", help="also write the translations here")
    p.add_argument("--by-length", action="store_true",
                   help="also print BLEU by source length (Figure 3, left)")
    _shortlist_arg(p)
    _progress_arg(p)

    p = verb("rescore", "Re-rank an n-best list with the model's log p(T|S) (Table 2).",
             cmd_rescore)
    _model_args(p, decoding=False)
    p.add_argument("--src", required=True, metavar="FILE", help="the source sentences")
    p.add_argument("--nbest", required=True, metavar="FILE",
                   help="lines 'index ||| hypothesis ||| score' (Moses n-best format)")
    p.add_argument("--weight", type=float, default=0.5, metavar="W",
                   help="combined = W * log p(T|S) + (1 - W) * list score (default 0.5)")
    p.add_argument("--one-best", action="store_true",
                   help="print only the best hypothesis of each source")
    _progress_arg(p)

    p = verb("average", "Write the mean of the weights of checkpoints of one model (same "
             "shapes, vocabularies, tokenizers and source reversal).", cmd_average)
    p.add_argument("--model", action="append", default=[], metavar="CKPT",
                   help="a checkpoint to average; repeat")
    p.add_argument("--last", nargs=2, metavar=("N", "RUN_DIR"),
                   help="the N newest step-N.pt of RUN_DIR (kept with train.keep_last)")
    p.add_argument("--out", required=True, metavar="FILE", help="the averaged checkpoint")

    p = verb("plot", "Figure 2 (pca), Figure 3 (length, rarity) of the paper, test perplexity "
             "by source length and target position (profile), and training curves (curves "
             "RUN_DIR...).", cmd_plot)
    p.add_argument("kind", choices=("pca", "length", "rarity", "profile", "curves"))
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help=f"curves: run directories of `seq2seq train` (their {METRICS})")
    _model_args(p, required=False)
    p.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.png and "
                   "PREFIX.svg (and PREFIX.json for length/rarity/profile)")
    p.add_argument("--phrases", metavar="FILE", help="pca: one phrase per line")
    p.add_argument("--layers", choices=("top", "all"), default="top",
                   help="pca: top layer's h, or all layers' h concatenated")
    p.add_argument("--src", metavar="FILE", help="length/rarity/profile: test sources")
    p.add_argument("--ref", metavar="FILE", help="length/rarity/profile: references")
    p.add_argument("--hyps", metavar="FILE",
                   help="length/rarity: existing translations (else they are made)")
    p.add_argument("--buckets", type=int, default=8, metavar="N",
                   help="rarity: number of equal-size buckets (default 8)")
    p.add_argument("--measure", choices=("vocab", "train-words"), default="vocab",
                   help="rarity: rank the model's tokens by their place in its source "
                        "vocabulary (vocab, the default), or the Moses words by their count "
                        "in --train-src (train-words: the same for every model)")
    p.add_argument("--train-src", metavar="FILE",
                   help="rarity --measure train-words: the training sources (.gz/.xz read "
                        "as compressed)")
    p.add_argument("--width", type=int, default=5, metavar="N",
                   help="length: bucket width in source words (default 5)")

    p = verb("shortlist", "Build a vocabulary shortlist from a data directory's training "
             "pairs, for --shortlist: each source piece's likeliest translations (IBM Model "
             "1) and the most frequent target pieces.", cmd_shortlist)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the data directory (made by `seq2seq prepare`) the model trained on")
    p.add_argument("--out", required=True, metavar="FILE", help="the shortlist to write")
    p.add_argument("--translations", type=int, default=SHORTLIST_TRANSLATIONS, metavar="K",
                   help="target pieces kept per source piece (default %(default)s)")
    p.add_argument("--frequent", type=int, default=SHORTLIST_FREQUENT, metavar="N",
                   help="most frequent target pieces, always candidates (default %(default)s)")
    p.add_argument("--iterations", type=int, default=SHORTLIST_ITERATIONS, metavar="N",
                   help="EM rounds of IBM Model 1 (default %(default)s)")

    p = verb("serve", "Serve translation over HTTP: a JSON API and a web page.", cmd_serve)
    p.add_argument("--model", action="append", required=True, metavar="CKPT",
                   help="checkpoint; repeat for an ensemble")
    _device_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    _shortlist_arg(p)
    _limit_args(p)
    p.add_argument("--no-batching", action="store_true",
                   help="decode each request on its own, without waiting")
    return parser


def _limit_args(p: argparse.ArgumentParser) -> None:
    """One option per field of the server's limits, from the field's metadata."""
    from seq2seq.serve.limits import SETTINGS, allowed_range, shown_default

    for settings in SETTINGS:
        for f in dataclasses.fields(settings):
            meta, default, bounds = f.metadata, f.default, allowed_range(f)
            help = f"{meta['help']} (default {shown_default(f)}{'; ' if bounds else ''}{bounds})"
            # a tuple is a list of names, one or more after the option
            kind = {"nargs": "+"} if isinstance(default, tuple) else {"type": type(default)}
            p.add_argument(meta["flag"], dest=_limit_dest(settings, f.name), default=default,
                           metavar=meta["metavar"], help=help, **kind)


def _limit_dest(settings: type, name: str) -> str:
    return f"{settings.__name__}.{name}"  # Limits and Batching both have max_sentences


def limits_from(args, settings: type):
    """The `settings` dataclass (`Limits`, `Guard` or `Batching`) made from its options."""
    return settings(**{f.name: getattr(args, _limit_dest(settings, f.name))
                       for f in dataclasses.fields(settings)})


def _shortlist_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shortlist", metavar="FILE",
                   help="decode each batch over its sources' likely translations and the "
                        "frequent target words only (a file of `seq2seq shortlist`, built "
                        "from the model's data): faster, scores normalised over them "
                        "(default: the whole vocabulary, exact)")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="a progress bar on stderr (default: only when stderr is a terminal)")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default=DEFAULT_DEVICE)
    p.add_argument("--precision", choices=DECODE_PRECISIONS, default=DEFAULT_PRECISION,
                   help="matmul precision (default %(default)s): " + "; ".join(
                       f"{name}: {PRECISION_HELP[name]}" for name in DECODE_PRECISIONS)
                   + ". Speed and BLEU of each, per CPU kind: bench/RESULTS.md")


def _model_args(p: argparse.ArgumentParser, decoding: bool = True, required: bool = True
                ) -> None:
    p.add_argument("--model", action="append", required=required, metavar="CKPT",
                   help="checkpoint; repeat for an ensemble")
    _device_args(p)
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    if decoding:
        p.add_argument("--beam", type=int, default=12, metavar="K",
                       help="beam size (default 12, the paper's); 1 = greedy")
        p.add_argument("--max-len-a", type=float, default=2.0, metavar="A",
                       help="max output length A * source length + B (default A=2)")
        p.add_argument("--max-len-b", type=int, default=10, metavar="B", help="(default B=10)")
        p.add_argument("--length-penalty", type=float, default=0.0, metavar="ALPHA",
                       help="rank beam hypotheses by log p / ((5 + length) / 6) ** ALPHA "
                            "(default 0: by log p, as in the paper)")


# ---------------------------------------------------------------------------- verbs


def cmd_prepare(args) -> None:
    from seq2seq.prepare import prepare

    with _progress_bar(args, "pairs") as bar:
        prepare(
            args.train_src, args.train_tgt, args.valid_src, args.valid_tgt, args.out,
            src_vocab=args.src_vocab, tgt_vocab=args.tgt_vocab, tokenizer=args.tokenizer,
            lowercase=args.lowercase, max_len=args.max_len, src_lang=args.src_lang,
            tgt_lang=args.tgt_lang, workers=args.workers, force=args.force,
            progress=bar.update,
        )


def cmd_train(args) -> None:
    from seq2seq.config import load_config

    device = [f"train.device={args.device}"] if args.device else []
    cfg = load_config(args.config, [*args.overrides, *device])
    if args.dry_run:
        return _dry_run(cfg, args.data)
    if not args.data or not args.out:
        raise Seq2SeqError("train needs --data DIR and --out DIR (or --dry-run)")
    from seq2seq.train import train

    _setup_process("train", cfg.train.device, cfg.train.threads)
    result = train(cfg, args.data, args.out)
    print(json.dumps(result))


def _dry_run(cfg, data: str | None) -> None:
    from seq2seq.data import DataDir
    from seq2seq.model import count_parameters, parameter_shapes

    if data:
        d = DataDir(data)
        sizes = len(d.src_vocab), len(d.tgt_vocab)
    else:
        sizes = cfg.model.src_vocab, cfg.model.tgt_vocab
    counts = count_parameters(parameter_shapes(*sizes, cfg.model))  # nothing allocated
    m = cfg.model
    print(f"model: {m.num_layers} layers x {m.hidden_size} cells, embeddings {m.embed_dim}, "
          f"vocab {sizes[0]:,} src / {sizes[1]:,} tgt, reverse_source={m.reverse_source}")
    for name, n in counts.items():
        print(f"  {name:<13} {n:>13,}  ({n / 1e6:.1f}M)")
    recurrent = counts["encoder_lstm"] + counts["decoder_lstm"]
    print(f"  {'recurrent':<13} {recurrent:>13,}  ({recurrent / 1e6:.1f}M)")


def cmd_translate(args) -> None:
    from seq2seq.text import atomic_output

    if args.output:  # --input may be the output: it is read whole before it is replaced
        check_not_an_input(args.output, "--output", [("--model", m) for m in args.model] +
                           [("--shortlist", args.shortlist)])
    translator = _load(args)
    with (atomic_output(args.output) if args.output else nullcontext(sys.stdout) as out,
          _progress_bar(args, "sentences") as bar):
        lines = _input_lines(args.input)
        offset = 0
        while chunk := list(islice(lines, INPUT_CHUNK)):
            results = translator.translate(
                chunk, beam=args.beam, nbest=args.nbest, batch_size=args.batch_size,
                max_len_a=args.max_len_a, max_len_b=args.max_len_b, first_line=offset + 1,
                length_penalty=args.length_penalty, progress=bar.update)
            for i, r in enumerate(results, start=offset):
                if args.nbest == 1:
                    out.write(r.text + "\n")
                else:
                    out.writelines(f"{i} ||| {text} ||| {score:.4f}\n" for text, score in r.nbest)
            out.flush()
            offset += len(chunk)


def cmd_score(args) -> None:
    from seq2seq.text import read_pairs

    translator = _load(args)
    pairs = read_pairs(args.src, args.tgt)
    with _progress_bar(args, "pairs") as bar:
        while chunk := list(islice(pairs, INPUT_CHUNK)):
            sources, targets = zip(*chunk)
            for s in translator.score(sources, targets, batch_size=args.batch_size,
                                      progress=bar.update):
                print(f"{s:.4f}")


def cmd_evaluate(args) -> None:
    from seq2seq.evaluate import evaluate
    from seq2seq.text import atomic_output, read_pairs

    if args.hyps:
        check_not_an_input(args.hyps, "--hyps", [("--src", args.src), ("--ref", args.ref),
                                                 ("--shortlist", args.shortlist),
                                                 *(("--model", m) for m in args.model)])
    translator = _load(args)
    pairs = list(read_pairs(args.src, args.ref))
    if not pairs:
        raise DataError(f"{args.src}: empty test set")
    sources, refs = zip(*pairs)
    with _progress_bar(args, "sentences", total=len(sources)) as bar:
        metrics, hyps = evaluate(translator, sources, refs, beam=args.beam,
                                 batch_size=args.batch_size, max_len_a=args.max_len_a,
                                 max_len_b=args.max_len_b,
                                 length_penalty=args.length_penalty, progress=bar.update)
    metrics["models"], metrics["shortlist"] = args.model, args.shortlist
    if args.hyps:
        with atomic_output(args.hyps) as f:
            f.writelines(h + "\n" for h in hyps)
    if args.by_length:
        from seq2seq import analysis

        buckets = analysis.bleu_by_length(sources, hyps, refs, translator.src_tokenizer.lang)
        metrics["by_length"] = json.loads(analysis.buckets_to_json(buckets,
                                                                   "source length (words)"))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    if args.by_length:
        print(analysis.buckets_table(buckets, "src words"))
    print(f"BLEU {metrics['bleu']:.2f} | chrF {metrics['chrf']:.2f} | tokenized BLEU "
          f"{metrics['tok_bleu']:.2f} | perplexity {metrics['ppl']:.2f} | "
          f"{metrics['sentences']} sentences, beam {metrics['beam']}, "
          f"{metrics['sentences_per_second']} sent/s")
    print(metrics["bleu_signature"])


def cmd_serve(args) -> None:
    from seq2seq.serve import Batching, Guard, Limits, serve

    # The dataclasses and serve() check their arguments (ArgumentError, naming the option).
    limits, guard = limits_from(args, Limits), limits_from(args, Guard)
    batching = Batching.off() if args.no_batching else limits_from(args, Batching)
    serve(args.model, host=args.host, port=args.port, device=args.device,
          precision=args.precision, limits=limits, batching=batching, guard=guard,
          shortlist=args.shortlist)


def cmd_shortlist(args) -> None:
    from seq2seq.prepare import DATA_FILES
    from seq2seq.shortlist import build_shortlist

    check_not_an_input(args.out, "--out", [("--data", Path(args.data) / name)
                                           for name in sorted(DATA_FILES)])
    shortlist = build_shortlist(args.data, args.translations, args.frequent, args.iterations)
    shortlist.save(args.out)
    src, k = shortlist.table.shape
    print(f"{args.out}: {k} translations of each of {src:,} source pieces, "
          f"{len(shortlist.frequent):,} frequent target pieces")


def cmd_rescore(args) -> None:
    from seq2seq.analysis import read_nbest, rescore
    from seq2seq.text import read_lines

    translator = _load(args)
    entries = read_nbest(args.nbest)
    with _progress_bar(args, "hypotheses", total=len(entries)) as bar:
        ranked = rescore(entries, list(read_lines(args.src)), translator, args.weight,
                         progress=bar.update)
    seen = set()
    for e in ranked:
        if args.one_best:
            if e.source not in seen:
                print(e.text)
            seen.add(e.source)
        else:
            print(f"{e.source} ||| {e.text} ||| {e.score:.4f} {e.model_score:.4f} ||| "
                  f"{e.combined:.4f}")


def cmd_average(args) -> None:
    from seq2seq.checkpoint import average_checkpoints, save_checkpoint
    from seq2seq.rundir import RunDir

    paths = list(args.model)
    if args.last:
        count, run_dir = args.last
        count = int(count) if count.isdigit() else count
        check_integer("N", count, 1, why=" (--last N RUN_DIR)")
        paths += RunDir(run_dir).last_checkpoints(count)
    if len(paths) < 2:
        raise Seq2SeqError("average needs two checkpoints or more: --model CKPT --model CKPT "
                           "..., or --last N RUN_DIR")
    check_not_an_input(args.out, "--out", [("--model", path) for path in paths])
    save_checkpoint(average_checkpoints(paths), args.out)
    print(f"{args.out}: the mean of {', '.join(map(str, paths))}")


def cmd_plot(args) -> None:
    from seq2seq import analysis
    from seq2seq.text import atomic_output, read_lines, read_pairs

    _check_plot_outputs(args)
    if args.kind == "curves":
        return _plot_curves(args)
    if args.runs:
        raise Seq2SeqError(f"plot {args.kind} takes no RUN_DIR (only plot curves does)")
    if not args.model:
        raise Seq2SeqError(f"plot {args.kind} needs --model CKPT")
    if args.kind == "rarity" and (args.measure == "train-words") != bool(args.train_src):
        raise Seq2SeqError("plot rarity: --measure train-words and --train-src FILE go together")
    translator = _load(args)
    if args.kind == "pca":
        if not args.phrases:
            raise Seq2SeqError("plot pca needs --phrases FILE")
        phrases = [p for p in read_lines(args.phrases) if p.strip()]
        points = analysis.pca_2d(translator.encode(phrases, layers=args.layers))
        paths = analysis.plot_pca(points, phrases, "Encoder final states, 2-D PCA",
                                  Path(args.out))
        print("\n".join(map(str, paths)))
        return
    if not args.src or not args.ref:
        raise Seq2SeqError(f"plot {args.kind} needs --src FILE and --ref FILE")
    pairs = list(read_pairs(args.src, args.ref))
    if not pairs:
        raise DataError(f"{args.src}: empty test set")
    sources, refs = zip(*pairs)
    if args.kind == "profile":
        return _plot_profile(args, translator, sources, refs)
    if args.kind == "rarity":  # before translating: a bad --train-src fails at once
        rarity, xlabel = _rarity(args, translator, sources)
    hyps = _hypotheses(args, translator, sources)
    if args.kind == "length":
        buckets = analysis.bleu_by_length(sources, hyps, refs, translator.src_tokenizer.lang,
                                          args.width)
        xlabel = "source length (words)"
    else:
        buckets = analysis.bleu_by_rarity(rarity, hyps, refs, args.buckets)
    out = Path(args.out)
    paths = analysis.plot_buckets(buckets, xlabel, f"BLEU by {xlabel}", out)
    json_path = out.with_suffix(".json")
    with atomic_output(json_path) as f:
        f.write(analysis.buckets_to_json(buckets, xlabel) + "\n")
    print(analysis.buckets_table(buckets, args.kind))
    print("\n".join(map(str, [*paths, json_path])))


def _check_plot_outputs(args) -> None:
    """No file `plot` writes (PREFIX.png, .svg, .json) may be one of its inputs; their folder
    is made now, so that a bad --out fails before the work."""
    from seq2seq.analysis import FIGURE_SUFFIXES
    from seq2seq.files import make_folder
    from seq2seq.rundir import RunDir

    inputs = [("--src", args.src), ("--ref", args.ref), ("--hyps", args.hyps),
              ("--phrases", args.phrases), ("--train-src", args.train_src),
              *(("--model", m) for m in args.model or ()),
              *(("RUN_DIR", RunDir(run).metrics) for run in args.runs)]
    for suffix in (*FIGURE_SUFFIXES, ".json"):
        check_not_an_input(Path(args.out).with_suffix(suffix), "--out", inputs)
    make_folder(Path(args.out).parent)


def _rarity(args, translator, sources) -> tuple[list[float], str]:
    """Each source's rarity by `--measure`, and its axis label."""
    from seq2seq import analysis

    if args.measure == "vocab":
        return (analysis.mean_vocab_rank(sources, translator.src_tokenizer,
                                         translator.src_vocab),
                "mean frequency rank of the source tokens")
    lang = translator.src_tokenizer.lang
    ranks = analysis.training_word_ranks(args.train_src, lang)
    return (analysis.mean_training_rank(sources, ranks, lang),
            "mean frequency rank of the source words in the training sources")


def _hypotheses(args, translator, sources) -> list[str]:
    """The translations of --hyps, or else of the model."""
    from seq2seq.text import read_lines

    if not args.hyps:
        return [t.text for t in translator.translate(
            sources, beam=args.beam, batch_size=args.batch_size, max_len_a=args.max_len_a,
            max_len_b=args.max_len_b, length_penalty=args.length_penalty)]
    hyps = list(read_lines(args.hyps))
    if len(hyps) != len(sources):
        raise DataError(f"{args.hyps} has {len(hyps)} lines but {args.src} has {len(sources)}")
    return hyps


def _plot_profile(args, translator, sources, refs) -> None:
    from seq2seq import analysis
    from seq2seq.stats import perplexity_per_word
    from seq2seq.text import atomic_output

    nlls = analysis.token_nlls(translator, sources, refs, args.batch_size)
    profile = analysis.nll_profile(
        nlls, analysis.source_words(sources, translator.src_tokenizer.lang))
    out = Path(args.out)
    paths = analysis.plot_profile(profile, out)
    words = analysis.target_words(refs, translator.tgt_tokenizer.lang)
    summary = {"sentences": len(nlls), "ppl": analysis.token_perplexity(nlls),
               "ppl_per_word": perplexity_per_word(sum(float(x.sum()) for x in nlls),
                                                   sum(words), len(words))}
    json_path = out.with_suffix(".json")
    with atomic_output(json_path) as f:
        f.write(json.dumps({**summary, **profile}, indent=2) + "\n")
    print(analysis.profile_table(profile))
    print(f"perplexity {summary['ppl']:.2f} per target piece, {summary['ppl_per_word']:.2f} "
          f"per target word ({summary['sentences']} sentences, </s> counted)")
    print("\n".join(map(str, [*paths, json_path])))


def _plot_curves(args) -> None:
    from seq2seq import analysis
    from seq2seq.rundir import RunDir

    if not args.runs:
        raise Seq2SeqError("plot curves needs at least one RUN_DIR")
    if args.model:
        raise Seq2SeqError("plot curves reads run directories, not --model checkpoints")
    runs = {}
    for run in args.runs:
        name = Path(run).resolve().name
        runs[name if name not in runs else run] = RunDir(run).read_metrics()
    paths = analysis.plot_curves(runs, Path(args.out))
    print(f"{'run':>20} | updates | best valid ppl | last valid ppl | wall time")
    for r in analysis.curve_summary(runs):
        print(f"{r['run']:>20} | {r['steps']:>7} | {r['best_valid_ppl']:>14.2f} | "
              f"{r['last_valid_ppl']:>14.2f} | {r['elapsed_s'] / 60:7.1f} min")
    print("\n".join(map(str, paths)))


# ---------------------------------------------------------------------------- helpers


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (so a redirect or a test sees it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


def log_to_stderr() -> None:
    """The command line's log: the package's progress lines and notes (INFO) as they are,
    warnings prefixed "warning: ", on stderr. Once per process, however often it is called."""
    logger = logging.getLogger("seq2seq")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Format())
        logger.addHandler(handler)


def _load(args):
    """The Translator of --model, after the decoding arguments passed the library's checks
    (the same words as from Python or the server; before the slow part)."""
    from seq2seq.search import check_decoding
    from seq2seq.translator import Translator

    if hasattr(args, "beam"):
        check_decoding(args.beam, getattr(args, "nbest", 1), args.batch_size, args.max_len_a,
                       args.max_len_b, args.length_penalty)
    else:
        check_decoding(batch_size=args.batch_size)
    _setup_process("decode", args.device)
    return Translator.load(args.model, device=args.device, precision=args.precision,
                           shortlist=getattr(args, "shortlist", None))


def _setup_process(workload: str, device: str, threads: int | None = None) -> None:
    """The verb's process-wide settings, before its first computation (see
    `seq2seq.device.setup_process`)."""
    from seq2seq.device import resolve_device, setup_process

    setup_process(workload, resolve_device(device), threads)


@contextmanager
def _progress_bar(args, unit: str, total: int | None = None) -> Iterator:
    """A tqdm bar on stderr, shown if --progress, or if stderr is a terminal and not
    --no-progress; otherwise a silent one (its `update` does nothing). Never on stdout.
    While it is shown, the log's lines are written above it, not into it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    show = sys.stderr.isatty() if args.progress is None else args.progress
    with tqdm(total=total, unit=unit, file=sys.stderr, disable=not show,
              dynamic_ncols=True) as bar:
        with logging_redirect_tqdm([logging.getLogger("seq2seq")]) if show else nullcontext():
            yield bar


def _input_lines(path: str | None) -> Iterator[str]:
    from seq2seq.text import read_lines, read_stream

    if path:
        return read_lines(path)
    return read_stream(sys.stdin.buffer, "<stdin>")


if __name__ == "__main__":
    sys.exit(main())
