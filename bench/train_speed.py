"""Steady-state training throughput on the benchmark configuration, with MFU and peak RSS.

For each precision asked for, a fresh process builds the trainer of `bench/benchmark.yaml`,
takes the real training batches in their training order, runs `--warmup` updates untimed
and then `--steps` timed ones (collation, forward, backward, clipping, SGD: the trainer's
own `Trainer.train_next`).
Target tokens count </s>. In the same run, the matmul ceiling of the model's own shapes
is measured after each run (see `bench/common.py` for the FLOP formula and the ceiling),
and MFU is the median throughput against the best ceiling of the precision trained in
(each shape at its best rate of the rounds: `best_ceiling` in `bench/common.py`).

    .venv/bin/python -m bench.train_speed                       # fp32 and bf16, 3 repeats
    .venv/bin/python -m bench.train_speed --precision bf16 --repeats 1 --steps 100

`--config` and `--data` measure another configuration the same way, e.g. the demo's
(`make demo` prepares work/tatoeba-data); its MFU is then against that model's shapes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import (
    BENCH_CONFIG,
    BENCH_DATA,
    Shape,
    best_ceiling,
    ceiling_of_runs,
    matmul_ceiling,
    median,
    prepare_bench_data,
    run_child,
    timed_updates,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure(precision: str, steps: int, warmup: int, data: Path, overrides: list[str],
            config: Path = BENCH_CONFIG) -> dict:
    """Train `warmup` + `steps` updates in this process; the timed steps' throughput."""
    from seq2seq.config import load_config
    from seq2seq.device import peak_rss_mb, resolve_device, setup_process

    cfg = load_config(config, [f"train.precision={precision}", *overrides])
    setup_process("train", resolve_device(cfg.train.device), cfg.train.threads)  # as the CLI
    trainer, src, tgt, seconds = timed_updates(cfg, data, warmup, steps)
    shape = Shape.from_config(cfg.model, len(trainer.data.tgt_vocab))
    return {
        "system": "seq2seq", "precision": precision, "steps": steps, "warmup": warmup,
        "seconds": round(seconds, 2), "tgt_tok_s": round(tgt / seconds),
        "src_tgt_tok_s": round((src + tgt) / seconds),
        "ms_per_step": round(seconds / steps * 1e3, 1),
        "model_gflops": round(shape.train_flops(src, tgt) / seconds / 1e9, 1),
        "src_tokens": src, "tgt_tokens": tgt, "peak_rss_mb": round(peak_rss_mb()),
        "threads": torch.get_num_threads(),
    }


def ceiling(precision: str, src_per_step: float, tgt_per_step: float, data: Path,
            config: Path = BENCH_CONFIG) -> dict:
    """The matmul ceiling of the benchmark model's shapes, in this process."""
    from seq2seq.config import load_config
    from seq2seq.data import DataDir

    cfg = load_config(config)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    shape = Shape.from_config(cfg.model, len(DataDir(data).tgt_vocab))
    c = matmul_ceiling(shape, cfg.batching.batch_size, src_per_step, tgt_per_step,
                       DTYPES[precision])
    flops = shape.train_flops(round(src_per_step), round(tgt_per_step))
    return {"precision": precision, "ceiling_gflops": round(c["gflops"], 1),
            "ceiling_tgt_tok_s": round(tgt_per_step * c["gflops"] * 1e9 / flops),
            "rates_gflops": c["rates"],
            "gflop_per_step": {key: round(g, 4) for key, g in c["gflop"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=DTYPES)
    parser.add_argument("--steps", type=int, default=200, help="timed updates (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per precision")
    parser.add_argument("--data", type=Path, default=BENCH_DATA)
    parser.add_argument("--config", type=Path, default=BENCH_CONFIG,
                        help="default: bench/benchmark.yaml (the peers' configuration)")
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--child", choices=["train", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--per-step", nargs=2, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "train":
        print(json.dumps(measure(args.precision[0], args.steps, args.warmup, args.data,
                                 args.overrides, args.config)))
        return
    if args.child == "ceiling":
        print(json.dumps(ceiling(args.precision[0], *args.per_step, args.data, args.config)))
        return

    if args.data == BENCH_DATA:
        prepare_bench_data(args.data)
    me = ["-m", "bench.train_speed", "--data", str(args.data), "--config", str(args.config),
          "--steps", str(args.steps), "--warmup", str(args.warmup), *args.overrides]
    runs: dict[str, list[dict]] = {p: [] for p in args.precision}
    ceilings: dict[str, list[dict]] = {p: [] for p in args.precision}
    for _ in range(args.repeats):  # precisions alternate, so drift hits both alike
        for p in args.precision:  # each run, then the ceiling of its step, measured after it
            runs[p].append(run_child([*me, "--child", "train", "--precision", p]))
            print(json.dumps(runs[p][-1]), flush=True)
            ceilings[p].append(ceiling_of_runs(p, runs[p][-1:], args.data, args.config))
            print(json.dumps(ceilings[p][-1]), flush=True)
    records = []
    for p, rs in runs.items():
        ceil = best_ceiling(ceilings[p], rs)
        records.append({
            "precision": p, "tgt_tok_s": median([r["tgt_tok_s"] for r in rs]),
            "src_tgt_tok_s": median([r["src_tgt_tok_s"] for r in rs]),
            "model_gflops": median([r["model_gflops"] for r in rs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "ceiling_gflops": ceil["ceiling_gflops"],
            "ceiling_tgt_tok_s": ceil["ceiling_tgt_tok_s"], "mfu": ceil["mfu"],
            "repeats": len(rs),
        })
    print("\n| precision | tgt tok/s | src+tgt tok/s | model GFLOP/s | ceiling GFLOP/s | MFU "
          "| peak RSS |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['precision']} | {r['tgt_tok_s']:,} | {r['src_tgt_tok_s']:,} | "
              f"{r['model_gflops']:.0f} | {r['ceiling_gflops']:.0f} | {r['mfu']:.0%} | "
              f"{r['peak_rss_mb']:,} MB |")
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
