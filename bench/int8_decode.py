"""Int8 decoding, end to end, in one process: `Int8LSTM` against PyTorch's quantized LSTM,
or the shortlist's int8 rows packed for fbgemm from one call width or another.

Without `--pack-rows`, three translators of one checkpoint decode the first `--sentences`
test sentences: fp32, int8 with PyTorch's dynamic quantized LSTM (what `--precision int8`
ran before `seq2seq.int8.Int8LSTM`), and int8 as it runs now. The two int8 ones alternate
for `--rounds` rounds (a noisy machine slows both alike within a round); the ratio is the
median of the rounds' time ratios. Beside each: BLEU and how many translations equal
fp32's, which shows how faithful each int8 is to the float model.

With `--pack-rows A B` (and `--shortlist`), int8 decoding over the shortlist with
`seq2seq.shortlist.PACK_ROWS` set to A and to B, alternating; the translations must be
identical (both are bit for bit the whole layer's logits).

    .venv/bin/python -m bench.int8_decode --model M --beam 12 [--shortlist S]
    .venv/bin/python -m bench.int8_decode --model M --beam 5 --shortlist S --pack-rows 256 100000
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import CORPUS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint (.pt)")
    parser.add_argument("--shortlist", help="decode over this shortlist (`seq2seq shortlist`)")
    parser.add_argument("--beam", type=int, default=12)
    parser.add_argument("--length-penalty", type=float, default=0.0)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pack-rows", type=int, nargs=2, metavar=("A", "B"))
    args = parser.parse_args()

    import torch
    from sacrebleu.metrics import BLEU
    from torch import nn

    from seq2seq import shortlist, translator
    from seq2seq.device import quantization_quieted, quantize_int8
    from seq2seq.translator import Translator

    def pytorch_lstm_int8(model: nn.Module) -> nn.Module:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        with quantization_quieted():
            return quantize_dynamic(model, {nn.LSTM: per_channel_dynamic_qconfig,
                                            nn.Linear: per_channel_dynamic_qconfig},
                                    dtype=torch.qint8, inplace=True)

    def load(precision: str, quantize=quantize_int8) -> Translator:
        translator.quantize_int8 = quantize  # what Translator.load quantizes with
        try:
            return Translator.load(args.model, device="cpu", precision=precision,
                                   shortlist=args.shortlist)
        finally:
            translator.quantize_int8 = quantize_int8

    torch.set_num_threads(args.threads)
    sources = (CORPUS / "test.en").read_text(encoding="utf-8").splitlines()[:args.sentences]
    refs = (CORPUS / "test.fr").read_text(encoding="utf-8").splitlines()[:args.sentences]
    if args.pack_rows:
        int8 = load("int8")
        timed = {f"PACK_ROWS {n}": (int8, n) for n in args.pack_rows}
        texts = {}
    else:
        timed = {"int8, PyTorch's LSTM": (load("int8", pytorch_lstm_int8), None),
                 "int8, Int8LSTM": (load("int8"), None)}
        fp32 = load("fp32")
        texts = {"fp32": [t.text for t in fp32.translate(sources, beam=args.beam,
                                                          length_penalty=args.length_penalty)]}
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.rounds):
        for name, (model, pack_rows) in timed.items():
            if pack_rows is not None:
                shortlist.PACK_ROWS = pack_rows
            start = time.perf_counter()
            out = model.translate(sources, beam=args.beam, length_penalty=args.length_penalty)
            seconds[name].append(time.perf_counter() - start)
            texts[name] = [t.text for t in out]
    first, second = timed
    ratios = [a / b for a, b in zip(seconds[first], seconds[second])]
    print(f"{args.model}, beam {args.beam}, {len(sources)} sentences, shortlist "
          f"{args.shortlist}, {args.threads} threads, {args.rounds} rounds")
    print("| decoding | seconds (median) | BLEU | translations equal to fp32's |")
    print("|---|---:|---:|---:|")
    for name, hyps in texts.items():
        took = f"{statistics.median(seconds[name]):.3f}" if name in seconds else ""
        same = sum(a == b for a, b in zip(hyps, texts["fp32"])) if "fp32" in texts else ""
        bleu = BLEU().corpus_score(hyps, [refs]).score
        print(f"| {name} | {took} | {bleu:.2f} | {same} |")
    print(f"{first} / {second}, time: median of round ratios {statistics.median(ratios):.3f}"
          f" ({' '.join(f'{r:.2f}' for r in ratios)})")
    if args.pack_rows:
        print("translations identical:", texts[first] == texts[second])


if __name__ == "__main__":
    main()
