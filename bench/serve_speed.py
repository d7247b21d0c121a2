"""How fast is `seq2seq serve`? Sentences/s and latency at 1, 8 and 32 concurrent clients,
with dynamic batching on and off, in each precision asked for (`serve --precision`).

    .venv/bin/python -m bench.serve_speed --model runs/tatoeba-cpu/best.pt --write bench/SERVE.md
    .venv/bin/python -m bench.serve_speed --model M --precisions int8 bf16 --batching on \
        --clients 8 32

For each mode the server runs as its own process (`seq2seq serve`, loopback only, a free
port); the clients are asyncio tasks sending a fixed number of one-sentence requests
(test-set sentences) with a per-request timeout. Needs a checkpoint: `make demo` writes
runs/tatoeba-cpu/best.pt; bench/SERVE.md shows how to train a small one in minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shlex
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "data" / "tatoeba-en-fr" / "test.en"


@dataclass
class Result:
    precision: str
    mode: str
    clients: int
    requests: int
    seconds: float
    latencies: list[float]  # seconds, one per request
    batches: int

    @property
    def sentences_per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: int) -> float:
        """The q-th percentile latency in milliseconds."""
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, batching: bool, threads: int | None,
                 precision: str = "fp32") -> subprocess.Popen:
    """`seq2seq serve` in a child process, bound to 127.0.0.1."""
    cmd = [sys.executable, "-m", "seq2seq.cli", "serve", "--model", model, "--device", "cpu",
           "--host", "127.0.0.1", "--port", str(port), "--precision", precision]
    if not batching:
        cmd.append("--no-batching")
    env = None
    if threads:
        import os

        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


async def load(url: str, sentences: list[str], clients: int, beam: int,
               timeout: float) -> tuple[float, list[float]]:
    """`clients` tasks share the request list; wall seconds and each request's latency."""
    todo = iter(sentences)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        for sentence in todo:
            start = time.perf_counter()
            r = await http.post("/translate", json={"sentences": [sentence], "beam": beam})
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - start, latencies


def run_mode(args, batching: bool, sentences: list[str], precision: str) -> list[Result]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.model, port, batching, args.threads, precision)
    try:
        wait_healthy(url, server)
        asyncio.run(load(url, sentences[:8], 4, args.beam, args.timeout))  # warm up
        results = []
        for clients in args.clients:
            before = httpx.get(f"{url}/health").json()["batches"]
            seconds, latencies = asyncio.run(
                load(url, sentences[:args.requests], clients, args.beam, args.timeout))
            batches = httpx.get(f"{url}/health").json()["batches"] - before
            mode = "on" if batching else "off"
            results.append(Result(precision, mode, clients, len(latencies), seconds, latencies,
                                  batches))
            print(row(results[-1]), flush=True)
        return results
    finally:
        server.terminate()
        server.wait(30)


def row(r: Result) -> str:
    return (f"| {r.precision} | {r.mode} | {r.clients} | {r.requests} | "
            f"{r.sentences_per_second:.1f} | "
            f"{r.percentile(50):.0f} | {r.percentile(95):.0f} | {r.batches} |")


HEADER = ("| precision | batching | clients | requests | sentences/s | p50 ms | p95 ms | "
          "model calls |\n|---|---|---|---|---|---|---|---|")


def model_size(path: str) -> str:
    from seq2seq.translator import Translator

    t = Translator.load(path, device="cpu")
    model = t.ensemble.models[0]
    n = sum(p.numel() for p in model.parameters())
    cfg = model.cfg
    return (f"{n / 1e6:.1f}M parameters ({cfg.num_layers} x {cfg.hidden_size} LSTM, "
            f"vocab {len(t.src_vocab):,} src / {len(t.tgt_vocab):,} tgt)")


def write_report(path: Path, args, results: list[Result], command: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Serving speed\n"
    marker = "## Results"
    intro = text.split(marker)[0].rstrip() + "\n\n"
    table = "\n".join([HEADER, *(row(r) for r in results)])
    path.write_text(
        f"{intro}{marker}\n\n{datetime.date.today().isoformat()}, model {args.model}: "
        f"{model_size(args.model)}; beam {args.beam}, one sentence per request.\n\n"
        f"```sh\n{command}\n```\n\n{table}\n", encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint to serve")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=192,
                   help="one-sentence requests per (mode, clients) cell (default 192)")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120, help="per request, seconds")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server")
    p.add_argument("--precisions", nargs="+", default=["fp32"],
                   choices=["fp32", "bf16", "int8"], help="`serve --precision`, each in turn")
    p.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--write", metavar="MD", help="write the results into this file")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    sentences = SOURCES.read_text(encoding="utf-8").splitlines()
    print(HEADER, flush=True)
    results = [r for precision in args.precisions for batching in args.batching
               for r in run_mode(args, batching == "on", sentences, precision)]
    if args.write:
        command = shlex.join([".venv/bin/python", "-m", "bench.serve_speed", *sys.argv[1:]])
        write_report(Path(args.write), args, results, command)


if __name__ == "__main__":
    main()
