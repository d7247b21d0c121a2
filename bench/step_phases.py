"""Where one training step of the benchmark model goes: wall time of each of its phases.

Builds the trainer of `bench/benchmark.yaml` (as `bench/train_speed.py` does), runs
`--warmup` updates untimed, then times each phase of `--steps` updates on the training
batches in order. The step is the trainer's own `Trainer.train_next`, unchanged (schedule,
grad scaler, non-finite check and statistics included); its phase methods are wrapped to
mark when they end, and forward hooks on the encoder and decoder split `forward`: the
batch's copy to the device (`forward` up to the model), the encoder's forward, the decoder's
LSTM forward, the output layer with its loss and gradients (`chunked_loss`), `backward`,
`clip_gradients`, and `update` (the non-finite check, then the optimizer's step); `step`
ends with the step's statistics. Collating the batch is not timed. Prints the median of
each phase (ms) and of the step.

    .venv/bin/python -m bench.step_phases                    # bf16, 150 updates
    .venv/bin/python -m bench.step_phases --precision fp32 --steps 100
    .venv/bin/python -m bench.step_phases --operators --steps 30   # by operator instead

With `--operators`, the timed updates run under `torch.profiler` and its table of
operators by their own time is printed instead of the phases (the profiler slows the step;
read the shares, not the times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from bench.common import BENCH_CONFIG, BENCH_DATA, prepare_bench_data

PHASES = ("to_device", "encoder", "decoder_lstm", "output_loss", "backward", "clip", "update")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--steps", type=int, default=150, help="timed updates")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    parser.add_argument("--operators", action="store_true",
                        help="profile the timed updates by operator instead of by phase")
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    args = parser.parse_args()

    from seq2seq.config import load_config
    from seq2seq.device import resolve_device, setup_process
    from seq2seq.train import Trainer

    prepare_bench_data(BENCH_DATA)
    cfg = load_config(BENCH_CONFIG, [f"train.precision={args.precision}"])
    setup_process("train", resolve_device(cfg.train.device), cfg.train.threads)  # as the CLI
    times: dict[str, list[float]] = {p: [] for p in (*PHASES, "step")}
    marks: list[float] = []

    def mark(*_) -> None:
        marks.append(time.perf_counter())

    def timed(fn):
        """`fn`, marking the time when it returns."""
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            mark()
            return out
        return call

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, BENCH_DATA, run_dir)
        trainer.model.encoder.register_forward_pre_hook(mark)
        trainer.model.encoder.register_forward_hook(mark)
        trainer.model.decoder.register_forward_hook(mark)
        # The step's own code runs (Trainer.train_next); its phases mark when they end.
        set_learning_rate = trainer.set_learning_rate
        trainer.set_learning_rate = lambda lr: (marks.clear(), mark(), set_learning_rate(lr))
        for phase in ("forward", "backward", "clip_gradients", "update"):
            setattr(trainer, phase, timed(getattr(trainer, phase)))
        if args.operators:
            from torch.profiler import profile

            for _ in range(args.warmup):
                trainer.train_next()
            with profile() as prof:
                for _ in range(args.steps):
                    trainer.train_next()
            print(f"{args.precision}, {args.steps} updates under the profiler")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
            return
        for i in range(args.warmup + args.steps):
            trainer.train_next()
            mark()
            if i >= args.warmup:
                for phase, start, end in zip(PHASES, marks, marks[1:]):
                    times[phase].append((end - start) * 1e3)
                times["step"].append((marks[-1] - marks[0]) * 1e3)
    print(json.dumps({"precision": args.precision, "steps": args.steps,
                      "median_ms": {p: round(statistics.median(t), 1)
                                    for p, t in times.items()}}))


if __name__ == "__main__":
    main()
