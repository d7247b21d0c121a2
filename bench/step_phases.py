"""Where one training step of the benchmark model goes: wall time of each of its phases.

Builds the trainer of `bench/benchmark.yaml` (as `bench/train_speed.py` does), runs
`--warmup` updates untimed, then times each phase of `--steps` updates on the training
batches in order: the encoder's forward, the decoder's LSTM forward, the output layer
with its loss and gradients (`chunked_loss`), the backward pass, gradient clipping and
the SGD update. Prints the median of each phase (ms) and of the whole step.

    .venv/bin/python bench/step_phases.py                    # bf16, 150 updates
    .venv/bin/python bench/step_phases.py --precision fp32 --steps 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_CONFIG, BENCH_DATA, prepare_bench_data  # noqa: E402

PHASES = ("encoder", "decoder_lstm", "output_loss", "backward", "clip", "sgd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--steps", type=int, default=150, help="timed updates")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    args = parser.parse_args()

    from seq2seq.config import load_config
    from seq2seq.device import autocast
    from seq2seq.model import chunked_loss
    from seq2seq.train import Trainer, _clip_grad_norm
    from seq2seq.vocab import PAD_ID

    prepare_bench_data(BENCH_DATA)
    cfg = load_config(BENCH_CONFIG, [f"train.precision={args.precision}"])
    times: dict[str, list[float]] = {p: [] for p in (*PHASES, "step")}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, BENCH_DATA, run_dir, log=lambda msg: None)
        model, out = trainer.model, trainer.model.decoder.output
        for i in range(args.warmup + args.steps):
            b = trainer._next_batch()
            marks = [time.perf_counter()]
            with autocast(trainer.device, trainer.precision):
                state = model.encode(b.src, b.src_lens)
                marks.append(time.perf_counter())
                hidden, _ = model.decoder(b.tgt_in, state)
                marks.append(time.perf_counter())
                mask = b.tgt_out != PAD_ID
                loss, _ = chunked_loss(hidden[mask], out.weight, out.bias, b.tgt_out[mask],
                                       cfg.train.loss_chunk)
                marks.append(time.perf_counter())
            trainer.optimizer.zero_grad(set_to_none=True)
            (loss / b.size).backward()
            marks.append(time.perf_counter())
            _clip_grad_norm(model.parameters(), cfg.optim.clip_norm)
            marks.append(time.perf_counter())
            trainer.optimizer.step()
            marks.append(time.perf_counter())
            if i >= args.warmup:
                for phase, start, end in zip(PHASES, marks, marks[1:]):
                    times[phase].append((end - start) * 1e3)
                times["step"].append((marks[-1] - marks[0]) * 1e3)
    print(json.dumps({"precision": args.precision, "steps": args.steps,
                      "median_ms": {p: round(statistics.median(t), 1)
                                    for p, t in times.items()}}))


if __name__ == "__main__":
    main()
