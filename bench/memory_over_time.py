"""Run a command and sample its memory through the run: is it flat, or does it grow?

Every `--every` seconds, one JSON line: seconds since the start, the resident set (RSS) of
the command's process tree and the largest RSS of one process so far (`VmHWM`). At the
end, the command's exit status and a summary: RSS at the first sample after `--settle`
seconds, at the end, its peak, and the growth per hour over the run after `--settle`
(a least-squares slope), which reads ~0 for a flat run.

    .venv/bin/python -m bench.memory_over_time --every 10 --out bench/.work/mem.jsonl -- \
        .venv/bin/seq2seq train configs/hansard-cpu.yaml --data DATA --out RUN
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import proc_kb, process_tree


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 3600 * sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds of start-up left out of the growth (default 120)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines written here")
    parser.add_argument("command", nargs="+", help="the command, after --")
    args = parser.parse_args()
    proc = subprocess.Popen(args.command)
    start = time.monotonic()
    samples = []
    with open(args.out, "w", encoding="utf-8") as out:
        while proc.poll() is None:
            t = time.monotonic() - start
            rss = sum(proc_kb(p, "status", "VmRSS") for p in process_tree(proc.pid)) / 1024
            hwm = proc_kb(proc.pid, "status", "VmHWM") / 1024
            if rss >= 1:  # not the instant between fork and exec
                samples.append((t, rss))
                out.write(json.dumps({"seconds": round(t, 1), "rss_mb": round(rss, 1),
                                      "peak_mb": round(hwm, 1)}) + "\n")
                out.flush()
            time.sleep(args.every)
        settled = [(t, v) for t, v in samples if t >= args.settle]
        summary = {
            "exit": proc.returncode, "seconds": round(time.monotonic() - start, 1),
            "samples": len(samples),
            "rss_after_settle_mb": round(settled[0][1], 1) if settled else None,
            "rss_end_mb": round(samples[-1][1], 1) if samples else None,
            "rss_peak_mb": round(max(v for _, v in samples), 1) if samples else None,
            "growth_mb_per_hour": round(slope_per_hour(settled), 1),
        }
        out.write(json.dumps({"summary": summary}) + "\n")
    print(json.dumps(summary))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
