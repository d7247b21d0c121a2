"""Decoding speed and quality: greedy, beam 5 and beam 12 on the first 1,000 test sentences.

Each mode runs in a fresh process (its own peak RSS): load the checkpoint, translate the
sentences in batches of `--batch-size` (max length 2 x source + 10), and report
sentences/s, target tokens/s (output tokens with </s>, after the model's tokenizer) and
the detokenized sacreBLEU against the references, so that speed never silently costs
quality. Timing covers tokenization, search and detokenization, not loading the model.

    .venv/bin/python -m bench.decode_speed --model runs/bench/best.pt
    .venv/bin/python -m bench.decode_speed --model M --beams 12 --precision bf16 --repeats 3
    .venv/bin/python -m bench.decode_speed --model M --precision int8 --shortlist S.pt

`--shortlist` decodes over a vocabulary shortlist (`seq2seq shortlist`); the BLEU beside
the speed is then to be read against the same command without it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import CORPUS, median, run_child


def measure(model: str, beam: int, batch_size: int, n: int, precision: str, threads: int,
            out: Path | None, shortlist: str | None = None) -> dict:
    import torch
    from sacrebleu.metrics import BLEU

    from seq2seq.device import peak_rss_mb, setup_process
    from seq2seq.text import read_lines
    from seq2seq.translator import Translator

    setup_process("decode", torch.device("cpu"), threads)  # as `seq2seq translate` does
    sources = list(read_lines(CORPUS / "test.en"))[:n]
    refs = list(read_lines(CORPUS / "test.fr"))[:n]
    translator = Translator.load(model, device="cpu", precision=precision, shortlist=shortlist)
    translator.translate(sources[:batch_size], beam=beam, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    hyps = [t.text for t in translator.translate(sources, beam=beam, batch_size=batch_size)]
    seconds = time.perf_counter() - start
    if out:
        out.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    tokens = sum(len(translator.target_ids([h])[0]) + 1 for h in hyps)
    return {
        "system": "seq2seq", "mode": "greedy" if beam == 1 else f"beam {beam}", "beam": beam,
        "precision": precision, "shortlist": shortlist, "sentences": len(sources),
        "batch_size": batch_size,
        "seconds": round(seconds, 2), "sent_s": round(len(sources) / seconds, 1),
        "tgt_tok_s": round(tokens / seconds),
        "bleu": round(BLEU().corpus_score(hyps, [refs]).score, 2),
        "peak_rss_mb": round(peak_rss_mb()), "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint (.pt)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 12])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per mode")
    parser.add_argument("--shortlist", help="decode with this vocabulary shortlist "
                        "(`seq2seq shortlist`; default: exact decoding)")
    parser.add_argument("--out-dir", type=Path, help="write each mode's translations here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = args.out_dir / f"hyp.beam{args.beams[0]}.fr" if args.out_dir else None
        print(json.dumps(measure(args.model, args.beams[0], args.batch_size, args.sentences,
                                 args.precision, args.threads, out, args.shortlist)))
        return
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[dict]] = {b: [] for b in args.beams}
    for _ in range(args.repeats):
        for beam in args.beams:
            argv = ["-m", "bench.decode_speed", "--child", "--model", args.model,
                    "--beams", str(beam), "--batch-size", str(args.batch_size),
                    "--sentences", str(args.sentences),
                    "--precision", args.precision, "--threads", str(args.threads)]
            if args.out_dir:
                argv += ["--out-dir", str(args.out_dir)]
            if args.shortlist:
                argv += ["--shortlist", args.shortlist]
            runs[beam].append(run_child(argv))
            print(json.dumps(runs[beam][-1]), flush=True)
    shortlist = f", shortlist {args.shortlist}" if args.shortlist else ""
    print(f"\n{args.precision}{shortlist}, batch {args.batch_size}, {args.sentences} sentences, "
          f"median of {args.repeats}\n\n| mode | sent/s | tgt tok/s | BLEU | peak RSS |\n"
          "|---|---:|---:|---:|---:|")
    for rs in runs.values():
        r = rs[0]
        print(f"| {r['mode']} | {median([x['sent_s'] for x in rs]):,.1f} | "
              f"{median([x['tgt_tok_s'] for x in rs]):,.0f} | {r['bleu']:.2f} | "
              f"{max(x['peak_rss_mb'] for x in rs):,} MB |")


if __name__ == "__main__":
    main()
