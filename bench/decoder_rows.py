"""How many decoder rows a decoding run feeds the model: the work that search
changes, such as starting beam search from one row per sentence, remove or add.

Counts the rows of every decoder step (`Ensemble.advance`) while translating the first
`--sentences` test sentences in batches of `--batch-size`, in fp32 on the CPU.
A row-step costs the same at every step (one LSTM step and one output layer row), so
the ratio of two counts bounds the speed-up between two versions of the search.

    .venv/bin/python -m bench.decoder_rows --model M --beams 1 5 12
    PYTHONPATH=OTHER_TREE/src .venv/bin/python -m bench.decoder_rows --model M
"""

from __future__ import annotations

import argparse
import json

from bench.common import CORPUS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint (.pt)")
    parser.add_argument("--beams", type=int, nargs="+", default=[12])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from seq2seq.device import setup_process
    from seq2seq.search import Ensemble
    from seq2seq.text import read_lines
    from seq2seq.translator import Translator

    setup_process("decode", torch.device("cpu"), args.threads)
    rows: list[int] = []
    advance = Ensemble.advance

    def counting(self, tokens, states):
        rows.append(len(tokens))
        return advance(self, tokens, states)

    Ensemble.advance = counting
    sources = list(read_lines(CORPUS / "test.en"))[:args.sentences]
    translator = Translator.load(args.model, device="cpu")
    for beam in args.beams:
        rows.clear()
        translator.translate(sources, beam=beam, batch_size=args.batch_size)
        print(json.dumps({"beam": beam, "sentences": len(sources),
                          "batch_size": args.batch_size, "decoder_steps": len(rows),
                          "row_steps": sum(rows)}))


if __name__ == "__main__":
    main()
