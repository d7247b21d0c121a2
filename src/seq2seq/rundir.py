"""The run directory of `seq2seq train`, in one place: what it holds, and how each file is
named, written and read.

    config.yaml     the run's config, `Config.to_dict()`, written when the run begins
    last.pt         the training checkpoint (`seq2seq.checkpoint`): every
                    train.checkpoint_every updates, at each validation, on SIGINT/SIGTERM
    best.pt         the model bundle of the best validation by train.best_metric
    step-N.pt       with train.keep_last: the model bundles of the newest keep_last
                    checkpoints (N: the step, 8 digits)
    best-N.pt       with train.keep_best: those of the keep_best best validations
    metrics.jsonl   one JSON record a line, each with its `step`: a training line (`loss`,
                    `ppl`, `lr`, `grad_norm`, tokens/s, `elapsed_s`) every
                    train.log_every updates, a validation line (`valid_ppl`, with
                    train.valid_metrics [ppl, bleu] `valid_bleu`; `best`, `elapsed_s`)
                    at each validation
    train.lock      held by the process training there, its PID in it
                    (`files.exclusive_lock`): a second run on the folder is refused
    tb/             with train.tensorboard, the numbers of metrics.jsonl as TensorBoard
                    scalars

The checkpoints and the metrics are replaced atomically (`files.atomic_file`); a resumed
run removes the temporary files of a save cut short by a kill, and drops the metric lines
written after the checkpoint it resumes from, so that the log reads as that of an
uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from seq2seq.errors import CheckpointError, ConfigError, DataError, check_integer, shown
from seq2seq.files import atomic_file, exclusive_lock, make_folder, temp_files

METRICS = "metrics.jsonl"
NUMBERED = ("step", "best")  # the kinds of numbered checkpoints


class RunDir:
    """The files of one run directory: `last`, `best`, `config`, `metrics`, `lock`,
    `tensorboard` are their paths; the methods write and read them. Only one process
    writes (rank 0 under torchrun), while it holds `locked()`."""

    def __init__(self, path: str | Path, tensorboard: bool = False):
        """`tensorboard`: mirror the metrics to tb/ (ConfigError now if the package is
        missing, not at the first log line)."""
        self.path = Path(path)
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.config = self.path / "config.yaml"
        self.metrics = self.path / METRICS
        self.lock = self.path / "train.lock"
        self.tensorboard = self.path / "tb"
        self._summary_writer = _summary_writer_class() if tensorboard else None
        self._scalars = None  # TensorBoard's writer, between `start_log` and `close_log`

    # ------------------------------------------------------------------ checkpoints

    def numbered(self, kind: str, step: int) -> Path:
        """step-00001200.pt (kind "step") or best-00001200.pt ("best")."""
        assert kind in NUMBERED
        return self.path / f"{kind}-{step:08d}.pt"

    def numbered_checkpoints(self, kind: str) -> list[Path]:
        """The numbered checkpoints of `kind`, oldest step first."""
        assert kind in NUMBERED
        return sorted(self.path.glob(f"{kind}-[0-9]*.pt"),
                      key=lambda p: int(p.stem.split("-")[1]))

    def last_checkpoints(self, n: int) -> list[Path]:
        """The `n` newest step-N.pt (train.keep_last); CheckpointError if fewer."""
        check_integer("n", n, 1)
        found = self.numbered_checkpoints("step")
        if len(found) < n:
            raise CheckpointError(f"{self.path}: {len(found)} numbered checkpoints (step-N.pt), "
                                  f"fewer than {n}; train.keep_last keeps them")
        return found[-n:]

    # ------------------------------------------------------------------ the run's files

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Make the folder and hold its lock while the block runs (InUse if another
        process holds it)."""
        make_folder(self.path)
        with exclusive_lock(self.lock, f"the run directory {self.path}"):
            yield

    def remove_leftovers(self) -> None:
        """Remove the temporary files of atomic writes cut short by a kill."""
        for name in (self.last.name, self.best.name, METRICS,
                     *(f"{kind}-[0-9]*.pt" for kind in NUMBERED)):
            for stale in temp_files(self.path / name):  # a pattern's temp files too
                stale.unlink()

    def write_config(self, config: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------------ metrics

    def start_log(self, step: int) -> None:
        """Go on logging from `step`: the records past it (written after the checkpoint
        resumed from) are dropped, and TensorBoard, if asked for, hides its own (its
        purge_step)."""
        self._truncate_metrics(step)
        if self._summary_writer:
            self._scalars = self._summary_writer(self.tensorboard, purge_step=step or None)

    def log(self, record: dict[str, Any]) -> None:
        """Append `record` (with its `step`) to metrics.jsonl, and its numbers to tb/."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._scalars:
            for name, value in record.items():
                if name != "step" and isinstance(value, int | float) and \
                        not isinstance(value, bool):
                    self._scalars.add_scalar(name, value, record["step"])
            if "valid_ppl" in record:
                self._scalars.flush()

    def close_log(self) -> None:
        if self._scalars:
            self._scalars.close()
            self._scalars = None

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, in order; DataError naming the file and the line
        if one is not a record (not JSON, no `step`, a number that is not one)."""
        if not self.metrics.is_file():
            raise DataError(f"{self.metrics}: not found (is {self.path} a run directory of "
                            "`seq2seq train`?)")
        records = [record for record, _ in self._lines()]
        if not records:
            raise DataError(f"{self.metrics}: no records yet")
        return records

    def logged_validation(self, step: int) -> dict[str, Any]:
        """The validation record of `step` in metrics.jsonl, or {}: a finished run re-run
        answers with it instead of validating again."""
        if not self.metrics.exists():
            return {}
        return next((r for r, _ in reversed(list(self._lines()))
                     if r["step"] == step and "valid_ppl" in r), {})

    def _truncate_metrics(self, step: int) -> None:
        if not self.metrics.exists():
            return
        keep = [line for record, line in self._lines() if record["step"] <= step]
        with atomic_file(self.metrics, "w") as f:
            f.write("".join(keep))

    def _lines(self) -> Iterator[tuple[dict[str, Any], str]]:
        """Each record of metrics.jsonl with its line as written."""
        text = self.metrics.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(keepends=True), start=1):
            if line.strip():
                yield _record(line, f"{self.metrics} line {number}"), line


def _record(line: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(record, dict) or "step" not in record:
        raise DataError(f"{where}: a metrics record needs a 'step'")
    for key in ("step", "elapsed_s", "ppl", "valid_ppl", "loss"):
        if key in record and (isinstance(record[key], bool) or
                              not isinstance(record[key], int | float)):
            raise DataError(f"{where}: '{key}' must be a number, got {shown(record[key])}")
    return record


def _summary_writer_class():
    """TensorBoard's SummaryWriter class; ConfigError if the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard: true needs the tensorboard package: pip install "
                          "'seq2seq[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter
