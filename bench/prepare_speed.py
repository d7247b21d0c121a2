"""`seq2seq prepare` at scale: pairs per second and peak memory, 200k and 2M pairs.

Builds synthetic-but-realistic corpora by repeating the bundled Tatoeba training pairs
(157,057) and shuffling them, up to each size, under bench/.work/ (ignored by git), then
runs `seq2seq prepare` on each with --workers 1 and 2, each in a fresh process, and
reports the wall time, pairs/s and the peak RSS of the largest process of the run (the
child's ru_maxrss from os.wait4, which covers the pool workers it reaped).
Memory that stays flat from 200k to 2M pairs is what streaming promises.

    .venv/bin/python -m bench.prepare_speed                       # 200k and 2M, workers 1, 2
    .venv/bin/python -m bench.prepare_speed --pairs 200000 --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "tatoeba-en-fr"
WORK = ROOT / "bench" / ".work"


def read_gz(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def make_corpus(pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """bench/.work/{pairs}/train.{en,fr}: the Tatoeba pairs repeated and shuffled to `pairs`."""
    out = WORK / str(pairs)
    src, tgt = out / "train.en", out / "train.fr"
    if src.exists() and tgt.exists():
        return src, tgt
    en, fr = read_gz(CORPUS / "train.en.gz"), read_gz(CORPUS / "train.fr.gz")
    order = np.random.default_rng(seed).permutation(pairs) % len(en)
    out.mkdir(parents=True, exist_ok=True)
    for path, lines in ((src, en), (tgt, fr)):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines[i] + "\n" for i in order)
    return src, tgt


def run_prepare(src: Path, tgt: Path, workers: int, tokenizer: str) -> dict[str, float]:
    """One `seq2seq prepare` in a fresh process: wall seconds and peak RSS (GB)."""
    out = WORK / f"data-{src.parent.name}-w{workers}"
    cmd = [sys.executable, "-m", "seq2seq", "prepare", "--train-src", str(src),
           "--train-tgt", str(tgt), "--valid-src", str(CORPUS / "valid.en"),
           "--valid-tgt", str(CORPUS / "valid.fr"), "--out", str(out),
           "--workers", str(workers), "--tokenizer", tokenizer, "--force"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    log = proc.stderr.read().strip()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log}")
    shutil.rmtree(out)
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
            "log": log.splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokenizer", default="moses", choices=["moses", "space"])
    args = parser.parse_args()
    for pairs in args.pairs:
        src, tgt = make_corpus(pairs)
        for workers in args.workers:
            result = run_prepare(src, tgt, workers, args.tokenizer)
            print(json.dumps({"pairs": pairs, "workers": workers, "tokenizer": args.tokenizer,
                              "pairs_per_s": round(pairs / result["seconds"]), **result}),
                  flush=True)


if __name__ == "__main__":
    main()
