import subprocess
import sys

import pytest

from seq2seq.errors import ArgumentError, CheckpointError, DataError
from seq2seq.rundir import RunDir


def _logged(run: RunDir, steps: list[int]) -> None:
    for step in steps:
        run.log({"step": step, "loss": 1.0 / step, "ppl": 2.0})
        if step % 10 == 0:
            run.log({"step": step, "valid_ppl": float(step), "best": True})


def test_the_log_goes_on_from_the_step_resumed(tmp_path):
    run = RunDir(tmp_path)
    _logged(run, [5, 10, 15, 20, 25])
    kept = "".join(run.metrics.read_text().splitlines(keepends=True)[:3])  # up to step 10
    run.start_log(10)  # as a run resumed from a last.pt of step 10
    assert run.metrics.read_text() == kept  # the lines themselves, as written
    _logged(run, [15])
    assert [r["step"] for r in run.read_metrics()] == [5, 10, 10, 15]
    assert run.logged_validation(10) == {"step": 10, "valid_ppl": 10.0, "best": True}
    assert run.logged_validation(15) == {}
    assert RunDir(tmp_path / "new").logged_validation(10) == {}


def test_reading_the_log_names_the_file_and_line(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(DataError, match=r"metrics.jsonl: not found \(is .* a run directory"):
        run.read_metrics()
    run.metrics.write_text("\n")
    with pytest.raises(DataError, match="metrics.jsonl: no records yet"):
        run.read_metrics()
    for line, problem in [("not json", "not JSON"),
                          ('{"loss": 1.0}', "a metrics record needs a 'step'"),
                          ('{"step": "3"}', "'step' must be a number, got '3'")]:
        run.metrics.write_text('{"step": 1}\n' + line + "\n")
        with pytest.raises(DataError, match=f"metrics.jsonl line 2: {problem}"):
            run.read_metrics()
        with pytest.raises(DataError, match="line 2"):  # nor is such a log resumed
            run.start_log(1)


def test_numbered_checkpoints_sort_by_step_and_the_last_n_are_checked(tmp_path):
    run = RunDir(tmp_path)
    assert run.numbered("step", 1200).name == "step-00001200.pt"
    for step in (100_000_000, 900, 1200):  # a step past 8 digits still sorts by number
        run.numbered("step", step).write_bytes(b"")
    run.numbered("best", 900).write_bytes(b"")
    assert [p.name for p in run.last_checkpoints(2)] == ["step-00001200.pt",
                                                         "step-100000000.pt"]
    assert len(run.numbered_checkpoints("best")) == 1
    with pytest.raises(CheckpointError, match="3 numbered checkpoints .* fewer than 4"):
        run.last_checkpoints(4)
    with pytest.raises(ArgumentError, match="n must be an integer >= 1, got 0"):
        run.last_checkpoints(0)


def test_leftovers_of_writes_cut_short_are_removed_and_nothing_else(tmp_path):
    run = RunDir(tmp_path)
    # A process killed inside `files.atomic_file`, as `save_checkpoint` writes a checkpoint.
    killed = ("import os, sys\nfrom seq2seq.files import atomic_file\n"
              "with atomic_file(sys.argv[1]) as f:\n    f.write(b'part'); os._exit(0)\n")
    targets = [run.last, run.best, run.metrics, run.numbered("step", 1200),
               run.numbered("best", 1200), tmp_path / "average.pt"]
    for target in targets:
        subprocess.run([sys.executable, "-c", killed, str(target)], check=True)
    run.last.write_bytes(b"whole")
    names = {p.name for p in tmp_path.iterdir()}
    assert len(names) == len(targets) + 1
    run.remove_leftovers()
    # What another command may be writing into the folder (`average --out`) is left alone.
    assert {p.name for p in tmp_path.iterdir()} == {
        "last.pt", *(n for n in names if n.startswith(".average.pt."))}
