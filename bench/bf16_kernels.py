"""seq2seq's bf16 kernels against PyTorch's code in bf16 training, in one process.

On this noisy VM two processes minutes apart differ by up to 25%, so the comparison runs
in one process: the benchmark trainer (`bench/benchmark.yaml`, bf16) takes `--warmup`
updates, then blocks of `--block` updates alternate between `train.bf16_kernels` on and
off (`Seq2Seq.use_bf16_kernels`; the order flips every other pair), on the training
batches in order, each block timed. Prints target tokens/s of every block and the ratio
of each pair (kernels / PyTorch); the median of those ratios is the figure.

With `--layer`, one LSTM layer alone instead (64 x 17 steps, forward and backward):
`seq2seq.bf16`'s against `nn.LSTM` under bf16 autocast (oneDNN's), alternating, with
each one's error against float32.

    .venv/bin/python -m bench.bf16_kernels                     # 8 pairs of 15 updates
    .venv/bin/python -m bench.bf16_kernels --layer --input 512
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bench.common import BENCH_CONFIG, BENCH_DATA, prepare_bench_data

BF16 = torch.bfloat16


def training_step(args) -> None:
    from seq2seq.config import load_config
    from seq2seq.device import resolve_device, setup_process
    from seq2seq.train import Trainer

    prepare_bench_data(BENCH_DATA)
    cfg = load_config(BENCH_CONFIG, ["train.precision=bf16"])
    setup_process("train", resolve_device(cfg.train.device), cfg.train.threads)  # as the CLI
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, BENCH_DATA, run_dir)
        for _ in range(args.warmup):
            trainer.train_next()
        for pair in range(args.pairs):
            for kernels in (True, False) if pair % 2 == 0 else (False, True):
                trainer.model.use_bf16_kernels(kernels)
                tokens, start = 0, time.perf_counter()
                for _ in range(args.block):
                    tokens += trainer.train_next()["tgt_tokens"]
                rates[kernels].append(tokens / (time.perf_counter() - start))
    ratios = [a / b for a, b in zip(rates[True], rates[False])]
    for kernels, name in ((True, "seq2seq's kernels"), (False, "PyTorch's code")):
        print(f"{name:18s} tgt tok/s per block: {' '.join(f'{r:,.0f}' for r in rates[kernels])}"
              f"  (median {statistics.median(rates[kernels]):,.0f})")
    print(f"pair ratios: {' '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f}x")


def one_layer(args) -> None:
    from seq2seq import bf16

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(args.input, args.hidden, 1, batch_first=True)
    x = torch.randn(args.batch, args.steps, args.input, requires_grad=True)

    def run(ours: bool, autocast: bool = True):
        lstm.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=BF16, enabled=autocast):
            out, _ = bf16.lstm_forward(lstm, x) if ours else lstm(x)
        out.float().sum().backward()
        return out.detach().float(), lstm.weight_hh_l0.grad.clone()

    exact = run(False, autocast=False)
    for ours, name in ((True, "seq2seq.bf16"), (False, "oneDNN bf16")):
        out, grad = run(ours)
        print(f"{name}: max output error {(out - exact[0]).abs().max():.4f}, dW_hh relative "
              f"error {(grad - exact[1]).norm() / exact[1].norm():.4f} (against float32)")
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for ours in (True, False):
            start = time.perf_counter()
            run(ours)
            times[ours].append(time.perf_counter() - start)
    flops = 6 * args.batch * args.steps * 4 * args.hidden * (args.input + args.hidden)
    for ours, name in ((True, "seq2seq.bf16"), (False, "oneDNN bf16")):
        median = statistics.median(times[ours])
        print(f"{name:12s} {median * 1e3:6.1f} ms  {flops / median / 1e9:5.0f} GFLOP/s "
              f"(forward + backward, median of {args.repeats})")
    ratios = [b / a for a, b in zip(times[True], times[False])]
    print(f"oneDNN's time / ours: median {statistics.median(ratios):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="pairs of blocks (step A/B)")
    parser.add_argument("--block", type=int, default=15, help="updates per block")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    parser.add_argument("--layer", action="store_true", help="one LSTM layer alone instead")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=17, help="time steps (--layer)")
    parser.add_argument("--input", type=int, default=256, help="input size (--layer)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15, help="(--layer)")
    args = parser.parse_args()
    if args.layer:
        torch.set_num_threads(2)
        one_layer(args)
    else:
        training_step(args)


if __name__ == "__main__":
    main()
