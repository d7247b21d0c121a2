"""Where decoding spends its time: the torch profiler's table of operators for one
`Translator.translate` call over the first test sentences (after one warm-up batch).

It also prints the share of the wall-clock time spent in the matrix products (the
operators of PRODUCTS, by their self time), and that share with top-k and log-softmax
added: decoding can go at most 1 / share times as fast without faster products, however
little the rest costs (in fp32 and bf16 the LSTM's gate arithmetic is inside oneDNN's
kernel and counts as products; in int8 it does not).

    .venv/bin/python -m bench.decode_profile --model M --precision int8 --beam 12
    .venv/bin/python -m bench.decode_profile --model M --precision int8 --shortlist S.pt
"""

from __future__ import annotations

import argparse
import time

from bench.common import CORPUS

# The operators that run the model's matrix products, by their own time (not their
# callers'): float32 / bf16 GEMMs; oneDNN's LSTM layer (its gate arithmetic is inside the
# kernel and counted here too); the int8 LSTMs (`seq2seq.int8.Int8LSTM`) and output layer
# (`quantized::linear_dynamic`, the quantization of its input included; the LSTMs' gate
# arithmetic runs as separate operators, `aten::sigmoid_`, `aten::addcmul`, ..., and is not
# counted); an int8 output layer cut to a shortlist's words (`aten::_int_mm`, its input's
# quantization not counted; from `shortlist.PACK_ROWS` rows a call, as beam 12's,
# `quantized::linear_dynamic` again).
PRODUCTS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::mkldnn_rnn_layer",
            "quantized::linear_dynamic", "aten::_int_mm"}
SCORING = {"aten::topk", "aten::_log_softmax"}  # each reads every score of every row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint (.pt)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    parser.add_argument("--beam", type=int, default=12)
    parser.add_argument("--sentences", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=14, help="operators listed")
    parser.add_argument("--shortlist", help="decode over this vocabulary shortlist "
                                            "(`seq2seq shortlist`)")
    args = parser.parse_args()

    import torch
    from torch.profiler import profile

    from seq2seq.device import setup_process
    from seq2seq.text import read_lines
    from seq2seq.translator import Translator

    setup_process("decode", torch.device("cpu"), args.threads)
    sources = list(read_lines(CORPUS / "test.en"))[:args.sentences]
    translator = Translator.load(args.model, device="cpu", precision=args.precision,
                                 shortlist=args.shortlist)
    translator.translate(sources[:args.batch_size], beam=args.beam, batch_size=args.batch_size)
    with profile() as prof:
        start = time.perf_counter()
        translator.translate(sources, beam=args.beam, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
    print(f"{args.precision}{' + shortlist' if args.shortlist else ''}, beam {args.beam}, "
          f"{len(sources)} sentences, {args.threads} "
          f"threads: {len(sources) / seconds:.1f} sentences/s (under the profiler)")
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    wall_us = seconds * 1e6  # the profiler's times are in microseconds
    products = {e.key: e.self_cpu_time_total for e in events if e.key in PRODUCTS}
    share = sum(products.values()) / wall_us
    print(f"matrix products: {share:.0%} of the wall-clock time ("
          + ", ".join(f"{k} {v / wall_us:.0%}" for k, v in sorted(products.items()))
          + f"): at most {1 / share:.2f}x as fast with everything else free")
    scoring = sum(e.self_cpu_time_total for e in events if e.key in SCORING) / wall_us
    print(f"with top-k and log-softmax ({scoring:.0%}): {share + scoring:.0%}, at most "
          f"{1 / (share + scoring):.2f}x as fast with the rest free")


if __name__ == "__main__":
    main()
