"""The parts of one beam-search step, timed alone: what int8 speeds up and what it does not.

At `--rows` decoder rows (768 = beam 12 x 64 sentences) of the benchmark model's shapes
(bench/benchmark.yaml, random weights: speed does not depend on the values), medians of
`--repeats` calls in one process:

- the decoder's 2-layer LSTM for one step and the output layer, in fp32 and int8
  (`seq2seq.device.quantize_int8`);
- on the (rows x vocab) float32 scores: `log_softmax`, `torch.logsumexp`, top-k of 2k
  and of k + 1 words per row (what beam search took before and takes now), and a
  two-stage top-k (the best 128-word blocks by their maxima, then the words in them).

    .venv/bin/python -m bench.beam_step_parts --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from bench.common import BENCH_CONFIG, median_ms


def block_topk(x: torch.Tensor, k: int, block: int = 128):
    """Top-k per row through the rows' best `block`-word blocks (exact up to ties)."""
    rows, vocab = x.shape
    full = vocab // block * block
    maxima = x[:, :full].unflatten(1, (-1, block)).amax(2)
    if full < vocab:
        maxima = torch.cat([maxima, x[:, full:].amax(1, keepdim=True)], 1)
    blocks = maxima.topk(k, 1, sorted=False).indices
    cols = (blocks[:, :, None] * block + torch.arange(block)).flatten(1).clamp_(max=vocab - 1)
    values, j = x.gather(1, cols).topk(k, 1)
    return values, cols.gather(1, j)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=768)
    parser.add_argument("--beam", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from seq2seq.config import load_config
    from seq2seq.device import quantize_int8, setup_process
    from seq2seq.model import Seq2Seq

    setup_process("decode", torch.device("cpu"), args.threads)
    cfg = load_config(BENCH_CONFIG).model
    model = Seq2Seq(cfg.src_vocab + 4, cfg.tgt_vocab + 4, cfg).eval()
    int8 = quantize_int8(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(0)
    n, k = args.rows, args.beam
    tokens = torch.randint(4, cfg.tgt_vocab + 4, (n,), generator=gen)
    state = (torch.rand(cfg.num_layers, n, cfg.hidden_size, generator=gen) - 0.5,
             torch.rand(cfg.num_layers, n, cfg.hidden_size, generator=gen) - 0.5)
    hidden = torch.rand(n, cfg.hidden_size, generator=gen) - 0.5
    scores = torch.randn(n, cfg.tgt_vocab + 4, generator=gen) * 3
    parts = {
        "lstm step fp32": lambda: model.decode_hidden(tokens, state),
        "lstm step int8": lambda: int8.decode_hidden(tokens, state),
        "output layer fp32": lambda: model.decoder.output(hidden),
        "output layer int8": lambda: int8.decoder.output(hidden),
        "log_softmax": lambda: torch.log_softmax(scores, 1),
        "logsumexp": lambda: torch.logsumexp(scores, 1),
        f"top-k of {2 * k}": lambda: scores.topk(2 * k, 1),
        f"top-k of {k + 1}": lambda: scores.topk(k + 1, 1),
        f"two-stage top-k of {2 * k}": lambda: block_topk(scores, 2 * k),
    }
    with torch.inference_mode():
        for name, fn in parts.items():
            print(json.dumps({"part": name, "rows": n, "threads": args.threads,
                              "ms": round(median_ms(fn, args.repeats), 2)}), flush=True)


if __name__ == "__main__":
    main()
