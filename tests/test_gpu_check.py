"""bench/gpu_check.py: its CPU twin runs every stage and passes, as the GPU check will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check(*args: str, out: Path) -> subprocess.CompletedProcess:
    """`PYTHONPATH=src python3 bench/gpu_check.py ARGS`, as on the GPU machine."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OUT": str(out)}
    return subprocess.run([sys.executable, "bench/gpu_check.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_cpu_twin_runs_every_stage_and_passes(tmp_path):
    done = _gpu_check("--device", "cpu", "--budget", "600", out=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["train fp32", "train bf16", "decode", "resume", "torchrun"]
    assert all(s["ok"] for s in stages.values())
    for name in ("train fp32", "train bf16"):
        train = stages[name]
        assert train["tgt_tok_s"] > 0 and train["ceiling_gflops"] > 0
        assert 0 < train["mfu"] and 0 < train["mfu_of_peak"]
    assert [r["precision"] for r in stages["decode"]["runs"]][0] == "fp32"
    resume = stages["resume"]
    assert resume["bit_exact"] and 0 < resume["resumed_from_step"] < resume["steps"]
    assert resume["valid_nll"][0] == resume["valid_nll"][1]
    ranks = stages["torchrun"]
    assert (ranks["world"], ranks["backend"], ranks["replicas_identical"]) == (2, "gloo", True)
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} | yes |" in table for name in stages)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_check_says_so_and_names_the_twin(tmp_path):
    done = _gpu_check(out=tmp_path)
    assert done.returncode == 1
    assert "no CUDA GPU is available" in done.stderr and "--device cpu" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list(tmp_path.iterdir())
