"""What the speed benchmarks share: the benchmark data, child processes, FLOPs, matmul ceiling.

The benchmark configuration is `../shared/PEERS.md`'s, written down in `bench/benchmark.yaml`:
2 x 512 LSTMs, embeddings 256, 10,000 lowercased Moses words per side, pairs of up to 50
tokens, batches of 64 sentences, SGD. Each measurement runs in a fresh child process so
that its peak RSS (`ru_maxrss`) is its own.

Model FLOPs (the PEERS.md formula). An LSTM layer with input size `i` and `h` cells does
two matmuls per token and time step, `x @ W_ih` (2 x i x 4h FLOPs) and `h @ W_hh`
(2 x h x 4h): 8h(i + h) per token. The output layer does 2 x h x V per target token.
Backward costs two matmuls per forward matmul (gradient of the input and of the weight),
so a training step costs 3 x forward:

    FLOPs = 3 x [ (src + tgt tokens) x sum_l 8h(i_l + h) + tgt tokens x 2hV ]

with i_1 = embed_dim, i_l = h above, and tgt tokens counting </s> (the decoder's inputs are
<s> + the words, as many). Embedding lookups, element-wise gate arithmetic and the softmax
are not counted: they are not matmuls.

The matmul ceiling is what the model's own matmuls would cost at the speed this CPU gives
each of their shapes, measured with `torch.mm` in the same run: the time of a typical batch
if nothing but its matmuls ran, each at its measured rate. MFU is the model FLOPs achieved
per second divided by that ceiling's FLOPs per second.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
BENCH_CONFIG = ROOT / "bench" / "benchmark.yaml"
BENCH_DATA = WORK / "bench-data"
CORPUS = ROOT / "data" / "tatoeba-en-fr"


def prepare_bench_data(out: Path = BENCH_DATA) -> Path:
    """The benchmark's data directory, prepared from the bundled corpus if missing."""
    if not (out / "meta.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "seq2seq", "prepare",
             "--train-src", str(CORPUS / "train.en.gz"), "--train-tgt", str(CORPUS / "train.fr.gz"),
             "--valid-src", str(CORPUS / "valid.en"), "--valid-tgt", str(CORPUS / "valid.fr"),
             "--out", str(out), "--tokenizer", "moses", "--lowercase", "--src-vocab", "10000",
             "--tgt-vocab", "10000", "--max-len", "50", "--workers", "2", "--force"],
            check=True)
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (from Linux's /proc/PID/task/TID/children)."""
    pids, i = [pid], 0
    while i < len(pids):
        for children in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            try:
                pids += [int(c) for c in children.read_text().split()]
            except OSError:  # the thread or process just ended
                pass
        i += 1
    return pids


def proc_kb(pid: int, file: str, field: str) -> int:
    """A memory field of `/proc/PID/FILE` (status: VmRSS, VmHWM; smaps_rollup: Pss) in KiB,
    0 once the process has ended."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
    except OSError:
        return 0


def run_child(argv: list[str]) -> dict:
    """Run `python argv...` in a fresh process in this one's directory (so a benchmark runs
    as `-m bench.NAME`, like its parent); its last stdout line is a JSON record."""
    proc = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({proc.returncode}): {' '.join(argv)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Shape:
    """The model's LSTM and output sizes, as the FLOP count and the ceiling need them."""

    embed_dim: int
    hidden: int
    layers: int
    tgt_vocab: int

    @classmethod
    def from_config(cls, model_cfg, tgt_vocab: int) -> Shape:
        return cls(model_cfg.embed_dim, model_cfg.hidden_size, model_cfg.num_layers, tgt_vocab)

    def lstm_inputs(self) -> list[int]:
        return [self.embed_dim] + [self.hidden] * (self.layers - 1)

    def lstm_flops_per_token(self) -> int:
        return sum(8 * self.hidden * (i + self.hidden) for i in self.lstm_inputs())

    def output_flops_per_token(self) -> int:
        return 2 * self.hidden * self.tgt_vocab

    def train_flops(self, src_tokens: int, tgt_tokens: int) -> int:
        """Matmul FLOPs of training on this many source and target tokens (fwd + bwd)."""
        return 3 * ((src_tokens + tgt_tokens) * self.lstm_flops_per_token()
                    + tgt_tokens * self.output_flops_per_token())

    def train_matmuls(self, batch: int, src_tokens: int, tgt_tokens: int) -> list[tuple]:
        """(m, k, n, times) of every matmul of one training step of `batch` sentences.

        Forward: each layer's input projection over all tokens at once (m = tokens), its
        recurrent product one time step at a time (m = batch), the output layer over the
        target tokens. Backward: for each, the gradient of the input (m x n x k) and of the
        weight (k x m x n, accumulated over all tokens at once).
        """
        h4, out = 4 * self.hidden, []
        for tokens in (src_tokens, tgt_tokens):
            steps = max(1, round(tokens / batch))
            for i in self.lstm_inputs():
                out += [(tokens, i, h4, 1), (tokens, h4, i, 1), (i, tokens, h4, 1)]
                out += [(batch, self.hidden, h4, steps), (batch, h4, self.hidden, steps),
                        (self.hidden, tokens, h4, 1)]
        v = self.tgt_vocab
        out += [(tgt_tokens, self.hidden, v, 1), (tgt_tokens, v, self.hidden, 1),
                (self.hidden, tgt_tokens, v, 1)]
        return out


CPU = torch.device("cpu")
GPU_ROUND = 20  # products per timed round on a GPU: launched back to back, then awaited


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.3,
                device: torch.device = CPU) -> float:
    """GFLOP/s of `torch.mm` of (m x k) @ (k x n) in `dtype` on `device`: the median of
    timed rounds. A round is one product on the CPU; on a GPU, GPU_ROUND products queued
    back to back and then awaited, as a training step queues its products."""
    from seq2seq.device import synchronize

    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    products = GPU_ROUND if device.type == "cuda" else 1

    def one_round() -> None:
        for _ in range(products):
            torch.mm(a, b)
        synchronize(device)

    for _ in range(3):
        one_round()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n * products / statistics.median(times) / 1e9


def matmul_ceiling(shape: Shape, batch: int, src_tokens: float, tgt_tokens: float,
                   dtype: torch.dtype, device: torch.device = CPU,
                   seconds: float = 0.3) -> dict:
    """Seconds and GFLOP/s of one typical step's matmuls, each at its measured rate (on
    `device`, `seconds` per shape), with each shape's rate and GFLOP per step (for
    `best_ceiling`)."""
    rates: dict[str, float] = {}
    gflop: dict[str, float] = {}
    for m, k, n, times in shape.train_matmuls(batch, round(src_tokens), round(tgt_tokens)):
        key = f"{m}x{k}x{n}"
        if key not in rates:
            rates[key] = matmul_rate(m, k, n, dtype, seconds, device)
        gflop[key] = gflop.get(key, 0.0) + 2 * m * k * n * times / 1e9
    gflops = step_gflops(gflop, rates)
    return {"step_seconds": sum(gflop.values()) / gflops, "gflops": gflops,
            "rates": {key: round(r) for key, r in rates.items()}, "gflop": gflop}


def step_gflops(gflop: dict[str, float], rates: dict[str, float]) -> float:
    """GFLOP/s of a step whose matmul shapes do `gflop[shape]` GFLOP each at `rates[shape]`
    GFLOP/s: the total over the time they take."""
    return sum(gflop.values()) / sum(g / rates[key] for key, g in gflop.items())


def timed_updates(cfg, data: Path, warmup: int, steps: int) -> tuple:
    """Train `warmup` untimed and then `steps` timed updates of `cfg` on `data` in this
    process (a temporary run directory; batches in training order, collation included):
    (the trainer, the timed source tokens, target tokens, seconds). A GPU's queued work is
    awaited before each clock read."""
    import tempfile

    from seq2seq.device import synchronize
    from seq2seq.train import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, data, run_dir)
        for _ in range(warmup):
            trainer.train_next()
        synchronize(trainer.device)
        src = tgt = 0
        start = time.perf_counter()
        for _ in range(steps):
            stats = trainer.train_next()
            src, tgt = src + stats["src_tokens"], tgt + stats["tgt_tokens"]
        synchronize(trainer.device)
        return trainer, src, tgt, time.perf_counter() - start


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def median_ms(fn, repeats: int) -> float:
    """Milliseconds of `fn()`: the median of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def ceiling_of_runs(precision: str, runs: list[dict], data: Path = BENCH_DATA,
                    config: Path = BENCH_CONFIG) -> dict:
    """The matmul ceiling (bench/train_speed.py's `ceiling` child, a fresh process) of the
    average step of `runs` (records of `train_speed.py --child train`), and the MFU of the
    median of their throughputs against it."""
    steps = sum(r["steps"] for r in runs)
    src = sum(r["src_tokens"] for r in runs) / steps
    tgt = sum(r["tgt_tokens"] for r in runs) / steps
    ceil = run_child(["-m", "bench.train_speed", "--data", str(data), "--config", str(config),
                      "--child", "ceiling", "--precision", precision,
                      "--per-step", str(src), str(tgt)])
    tok_s = median([r["tgt_tok_s"] for r in runs])
    return {**ceil, "mfu": round(tok_s / ceil["ceiling_tgt_tok_s"], 3)}


def best_ceiling(ceilings: list[dict], runs: list[dict]) -> dict:
    """One ceiling from several measured ones (`ceiling_of_runs` of each round, each taken
    in the same conditions as its round's training), and the MFU of the median throughput
    of `runs` against it. Each shape counts at the best rate it reached in any round: a
    burst of the machine's noise slows many shapes of one measurement by up to half
    (`bench/LOG.md`, run 5), which would lower the ceiling and flatter the MFU."""
    gflop = ceilings[0]["gflop_per_step"]
    if any(c["gflop_per_step"] != gflop for c in ceilings):
        raise ValueError("the rounds' ceilings are of different steps (matmul shapes or "
                         f"counts): {[c['gflop_per_step'] for c in ceilings]}")
    ceiling = step_gflops(gflop, {key: max(c["rates_gflops"][key] for c in ceilings)
                                  for key in gflop})
    # Tokens/s at the ceiling scale with it (the rounds time the same batches).
    ceiling_tok_s = ceilings[0]["ceiling_tgt_tok_s"] * ceiling / ceilings[0]["ceiling_gflops"]
    tok_s = median([r["tgt_tok_s"] for r in runs])
    return {"precision": ceilings[0]["precision"], "ceiling_gflops": round(ceiling, 1),
            "ceiling_tgt_tok_s": round(ceiling_tok_s), "mfu": round(tok_s / ceiling_tok_s, 3),
            "ceilings_gflops": [c["ceiling_gflops"] for c in ceilings]}
