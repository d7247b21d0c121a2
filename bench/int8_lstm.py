"""The int8 LSTM against PyTorch's: `seq2seq.int8.Int8LSTM` and PyTorch's dynamic quantized
LSTM (`torch.ao.quantization.quantize_dynamic`, what `--precision int8` ran before), on the
benchmark model's shapes (bench/benchmark.yaml: 2 layers of 512, embeddings 256).

Four calls: one decoder step of 64 rows (greedy's batch) and of 768 (beam 12 x 64
sentences), and an encoder pass of 64 sentences of 12 and of 30 tokens, each with a given
state. The two run alternately, `--rounds` times `--calls` calls each; the ratio is of the
medians. Each output's largest difference from the float LSTM is printed beside it, to
show that the two int8 LSTMs are as close to it as each other. Weights are drawn at random
(uniform +-0.08, the paper's init); speed does not depend on them. First, the reason for
Int8LSTM's gate arithmetic: `torch.tanh` against `torch.sigmoid` on 64 x 512 floats.

    .venv/bin/python -m bench.int8_lstm --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from torch import nn

SHAPES = ((64, 1), (768, 1), (64, 12), (64, 30))  # (rows, time steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from seq2seq.int8 import Int8LSTM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lstm = nn.LSTM(256, 512, 2, batch_first=True)
    for p in lstm.parameters():
        nn.init.uniform_(p, -0.08, 0.08)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantize_dynamic(nn.Sequential(copy.deepcopy(lstm)),
                                  {nn.LSTM: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]
    ours = Int8LSTM(lstm)
    gates = torch.randn(64, 512)
    for name, op in (("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
        for _ in range(20):
            op(gates)
        start = time.perf_counter()
        for _ in range(2000):
            op(gates)
        print(f"torch.{name}, 64 x 512: {(time.perf_counter() - start) / 2000 * 1e6:.1f} us")
    print(f"{args.threads} threads; median ms per call of {args.rounds} rounds x "
          f"{args.calls} calls, alternating")
    print("| rows | steps | PyTorch's quantized LSTM | Int8LSTM | ratio | max error vs float "
          "(theirs / ours) |\n|---:|---:|---:|---:|---:|---|")
    for rows, steps in SHAPES:
        x = torch.randn(rows, steps, 256) * 0.3
        state = torch.rand(2, rows, 512) * 2 - 1, torch.randn(2, rows, 512)
        times: dict[str, list[float]] = {"theirs": [], "ours": []}
        with torch.inference_mode():
            want = lstm(x, state)[0]
            errors = [(m(x, state)[0] - want).abs().max().item() for m in (theirs, ours)]
            for _ in range(args.rounds):
                for name, module in (("theirs", theirs), ("ours", ours)):
                    for _ in range(3):
                        module(x, state)
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        module(x, state)
                    times[name].append((time.perf_counter() - start) / args.calls * 1e3)
        a, b = statistics.median(times["theirs"]), statistics.median(times["ours"])
        print(f"| {rows} | {steps} | {a:.3f} | {b:.3f} | {a / b:.2f}x | "
              f"{errors[0]:.4f} / {errors[1]:.4f} |")


if __name__ == "__main__":
    main()
