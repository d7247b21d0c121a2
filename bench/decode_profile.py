"""Where decoding spends its time: the torch profiler's table of operators for one
`Translator.translate` call over the first test sentences (after one warm-up batch).

    .venv/bin/python bench/decode_profile.py --model M --precision int8 --beam 12
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint (.pt)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    parser.add_argument("--beam", type=int, default=12)
    parser.add_argument("--sentences", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=14, help="operators listed")
    args = parser.parse_args()

    import torch
    from torch.profiler import profile

    from seq2seq.device import setup_process
    from seq2seq.text import read_lines
    from seq2seq.translator import Translator

    setup_process("decode", torch.device("cpu"), args.threads)
    sources = list(read_lines(CORPUS / "test.en"))[:args.sentences]
    translator = Translator.load(args.model, device="cpu", precision=args.precision)
    translator.translate(sources[:args.batch_size], beam=args.beam, batch_size=args.batch_size)
    with profile() as prof:
        start = time.perf_counter()
        translator.translate(sources, beam=args.beam, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
    print(f"{args.precision}, beam {args.beam}, {len(sources)} sentences, {args.threads} "
          f"threads: {len(sources) / seconds:.1f} sentences/s (under the profiler)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
