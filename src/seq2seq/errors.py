"""The errors a user can cause. The CLI prints their message on one line and exits 2."""


class Seq2SeqError(Exception):
    """Bad input from the user: the message names what is wrong and where."""


class ConfigError(Seq2SeqError):
    """A config file or override is invalid."""


class DataError(Seq2SeqError):
    """A corpus file or data directory is invalid."""


class CheckpointError(Seq2SeqError):
    """A checkpoint is missing, truncated, or not one of ours."""


class TrainingStopped(Seq2SeqError):
    """Training stopped before its end: interrupted (last.pt saved) or diverged (the last
    good checkpoints kept). `exit_code` is what the CLI exits with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentError(Seq2SeqError, ValueError):
    """An argument of a library call is outside its allowed range; the message names it."""


def warn(message: str) -> None:
    """Tell the user something went differently than asked, without stopping."""
    import sys

    print(f"warning: {message}", file=sys.stderr)
