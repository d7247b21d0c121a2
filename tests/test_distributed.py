"""Data-parallel training under torchrun (2 CPU processes, gloo).

The ranks must hold the same parameters after every update, and those must be the
parameters of one process training on the same global batches; a torchrun run killed
mid-training must resume to the parameters of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from seq2seq.checkpoint import load_checkpoint
from seq2seq.config import config_from_dict
from seq2seq.data import DataDir, make_batches
from seq2seq.train import Trainer

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str | Path) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 ARGS` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", *map(str, args)]


def _run(command: list[str]) -> None:
    """Run a torchrun command to its end; if it fails, fail with the tail of its stderr (a
    bare exit status says nothing about which rank failed, or why)."""
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, \
        f"{' '.join(command[2:])} exited {proc.returncode}:\n{proc.stderr[-4000:]}"


def _train_command(cfg_path: Path, data_dir: Path, out: Path) -> list[str]:
    return _torchrun("-m", "seq2seq", "train", cfg_path, "--data", data_dir, "--out", out)


def _write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def test_two_ranks_agree_with_one_process_on_the_same_global_batches(data_dir, tmp_path):
    steps = 30
    cfg = tiny_config(batching={"batch_size": 16},
                      optim={"optimizer": "sgd", "lr": 0.5, "max_steps": steps},
                      train={"valid_every": steps, "threads": 1})
    # One process keeps a batch of 1 sentence that two ranks would drop: make sure there
    # is none, so that both runs see the same global batches.
    c, train = config_from_dict(cfg), DataDir(data_dir).split("train")
    sizes = [len(b) for b in make_batches(
        train.src.lengths, train.tgt.lengths, batch_size=c.batching.batch_size, max_tokens=None,
        pool_batches=c.batching.pool_batches, seed=c.train.seed, epoch=0)]
    assert min(sizes) >= 2 and len(sizes) >= steps
    cfg_path = _write_config(tmp_path / "cfg.yaml", cfg)

    single = Trainer(c, data_dir, tmp_path / "single")
    single.train()

    ddp = tmp_path / "ddp"
    _run(_torchrun(WORKER, cfg_path, data_dir, ddp))
    rank0, rank1 = torch.load(ddp / "rank0.pt"), torch.load(ddp / "rank1.pt")
    _assert_same(rank0, rank1, atol=0)  # DDP keeps the replicas bit-identical
    last = load_checkpoint(ddp / "last.pt")
    assert last["step"] == steps
    _assert_same(last["model"], rank0, atol=0)
    _assert_same(last["model"], single.model.state_dict(), atol=1e-5)
    # The log reports the loss of the whole global batch, not rank 0's share of it.
    assert _train_losses(ddp) == pytest.approx(_train_losses(tmp_path / "single"), rel=1e-5)


def _train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]


def _last_step(out: Path) -> int:
    try:
        return max(json.loads(line)["step"] for line in (out / "metrics.jsonl").open())
    except (FileNotFoundError, ValueError):
        return 0


def _kill_torchrun(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once, like a machine losing power.

    torchrun starts each worker in a session of its own, so its process group alone would
    leave the workers running: kill every group.
    """
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    for pid in (*map(int, children), proc.pid):
        os.killpg(pid, signal.SIGKILL)
    proc.wait()


def test_torchrun_killed_mid_training_resumes_to_the_same_parameters(data_dir, tmp_path):
    steps = 100
    cfg = tiny_config(batching={"batch_size": 16},
                      optim={"optimizer": "sgd", "lr": 0.5, "max_steps": steps},
                      model={"dropout": 0.1},  # uses each rank's RNG, which must resume too
                      train={"log_every": 5, "valid_every": 100, "checkpoint_every": 10})
    cfg_path = _write_config(tmp_path / "cfg.yaml", cfg)

    whole = tmp_path / "whole"
    _run(_train_command(cfg_path, data_dir, whole))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(cfg_path, data_dir, killed), env=ENV,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _last_step(killed) < 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    _kill_torchrun(proc)
    interrupted_at = load_checkpoint(killed / "last.pt")["step"]
    assert 0 < interrupted_at < steps, "the run was not interrupted mid-training"

    _run(_train_command(cfg_path, data_dir, killed))
    last = load_checkpoint(killed / "last.pt")
    assert last["step"] == steps
    _assert_same(last["model"], load_checkpoint(whole / "last.pt")["model"], atol=0)
    steps_logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").open()
                    if "loss" in line]
    assert steps_logged == sorted(set(steps_logged))
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]
