"""Shared fixtures: tiny slices of the bundled Tatoeba data, a prepared data dir, a tiny model."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from seq2seq.config import config_from_dict
from seq2seq.device import cpu_has_bf16
from seq2seq.prepare import prepare
from seq2seq.train import Trainer
from seq2seq.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "tatoeba-en-fr"

# bf16 numerics can only be checked where oneDNN has bf16 kernels (its LSTM has no other).
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(),
                                reason="this CPU has no native bf16 (AVX-512 BF16 or AMX)")

TINY_MODEL = {"embed_dim": 24, "hidden_size": 32, "num_layers": 2}


def tiny_config(**sections) -> dict:
    """A config dict for a model that trains in seconds; `sections` update its sections."""
    cfg = {
        "model": dict(TINY_MODEL),
        "batching": {"batch_size": 32},
        "optim": {"optimizer": "adam", "lr": 0.01, "max_steps": 40},
        "train": {"log_every": 10, "valid_every": 20, "seed": 3, "threads": 1},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def write_slice(path: Path, source: Path, start: int, stop: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)[start:stop]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Raw files: 1,500 training pairs (from test.*) and 100 validation pairs (from valid.*)."""
    d = tmp_path_factory.mktemp("corpus")
    return {
        "train_src": write_slice(d / "train.en", CORPUS / "test.en", 0, 1500),
        "train_tgt": write_slice(d / "train.fr", CORPUS / "test.fr", 0, 1500),
        "valid_src": write_slice(d / "valid.en", CORPUS / "valid.en", 0, 100),
        "valid_tgt": write_slice(d / "valid.fr", CORPUS / "valid.fr", 0, 100),
    }


@pytest.fixture(scope="session")
def data_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(corpus["train_src"], corpus["train_tgt"], corpus["valid_src"], corpus["valid_tgt"],
            out, src_vocab=2000, tgt_vocab=2000, max_len=200)
    return out


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory) -> Path:
    """A run directory with a tiny model trained for 120 steps (a few seconds)."""
    run = tmp_path_factory.mktemp("run")
    cfg = config_from_dict(tiny_config(optim={"max_steps": 120}, train={"valid_every": 60}))
    Trainer(cfg, data_dir, run).train()
    return run


@pytest.fixture(scope="session")
def translator(trained_run) -> Translator:
    torch.set_num_threads(1)
    return Translator.load(trained_run / "best.pt", device="cpu")


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve the FastAPI `app` with uvicorn (and its connection guard) on a background
    thread inside a with-block; yields its URL. Port 0 picks a free port."""
    import uvicorn

    from seq2seq.serve import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


BOUNDED_MB = 2048  # the address space of `run_bounded`'s child: ~0.7 GB is torch's own


def run_bounded(code: str, memory_mb: int = BOUNDED_MB, timeout: float = 120
                ) -> tuple[str, int]:
    """Run the Python `code` in a child process whose address space is capped at
    `memory_mb` (RLIMIT_AS), so that a regression that allocates gigabytes fails with a
    MemoryError instead of exhausting the machine. Its stdout, and its peak RSS in MB."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    peak = "\nimport resource\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + peak],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    assert done.returncode == 0, done.stderr[-3000:]
    *out, rss = done.stdout.splitlines()
    return "\n".join(out), int(rss)
