"""The errors a user can cause. The CLI prints their message on one line and exits 2; the
server answers 422 with the same message. Warnings (things done otherwise than asked, without
stopping) go through `logging`, one logger per module."""

import math
import reprlib
from collections.abc import Iterator
from contextlib import contextmanager

# The decoding ranges of `search.check_decoding`, here so that the server's limits (and the
# CLI's options made from them) can name them without loading torch.
MAX_BEAM = 256  # wider beams cost time and memory without changing the best hypothesis
MAX_LENGTH_PENALTY = 10.0  # beyond this every hypothesis runs to the length limit


class Seq2SeqError(Exception):
    """Bad input from the user: the message names what is wrong and where."""


class ConfigError(Seq2SeqError):
    """A config file or override is invalid."""


class DataError(Seq2SeqError):
    """A corpus file or data directory is invalid."""


class CheckpointError(Seq2SeqError):
    """A checkpoint, or a shortlist made for one, is missing, truncated, not one of ours, or
    (a shortlist) made for other vocabularies."""


class InUse(Seq2SeqError):
    """A folder is in use by another process: its lock (`seq2seq.files.exclusive_lock`) is
    held."""


class TrainingStopped(Seq2SeqError):
    """Training stopped before its end: interrupted (last.pt saved) or diverged (the last
    good checkpoints kept). `exit_code` is what the CLI exits with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentError(Seq2SeqError, ValueError):
    """An argument of a library call is outside its allowed range; the message names it,
    and `argument` is its name (the server's 422 points at the request field of that name)."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 2, 60, 60, 40
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4


def shown(value) -> str:
    """`repr(value)`, shortened to about 80 characters, for error messages. Bounded in time
    too: a value built from shared references (a YAML "billion laughs", a crafted
    checkpoint's config) can have an astronomically long repr; this one stops two levels
    down and after four items."""
    return _SHOWN.repr(value)


def check_text(name: str, texts: list[str]) -> None:
    """ArgumentError naming `name`, the item and the position if a string of `texts` holds
    a lone surrogate (U+D800..U+DFFF: no Unicode character, not writable as UTF-8), which
    SentencePiece's C++ code cannot take (pybind11 raises a bare RuntimeError)."""
    for i, text in enumerate(texts):
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ArgumentError(
                    f"{name}[{i}] holds an invalid code point U+{ord(text[err.start]):04X} "
                    f"(a lone surrogate) at character {err.start}", argument=name) from None


def check_number(name: str, value, low: float = 0.0, high: float = math.inf,
                 above: bool = False, below: bool = False, why: str = "") -> None:
    """ArgumentError naming `name` unless `value` is a finite number in [low, high] (low
    itself excluded if `above`, high if `below`). The one range check of real-valued
    arguments: the library's, the config's keys (`seq2seq.config`), the server's limits."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not (low < value if above else low <= value) or \
            not (value < high if below else value <= high):
        raise ArgumentError(f"{name} must be a finite number "
                            f"{_within(number_range(low, high, above, below))}{why}, got "
                            f"{shown(value)}", argument=name)


def check_integer(name: str, value, low: int, high: int | None = None, why: str = "") -> None:
    """ArgumentError naming `name` unless `value` is an integer in low..high (`why` says
    where a bound comes from). The one range check of integer arguments, as above."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or \
            (high is not None and value > high):
        raise ArgumentError(f"{name} must be an integer {_within(integer_range(low, high))}"
                            f"{why}, got {shown(value)}", argument=name)


def number_range(low: float, high: float = math.inf, above: bool = False,
                 below: bool = False) -> str:
    """`check_number`'s words for a range: ">= 0", "> 0", "[0, 10]", "[0, 1)", "(0, 1]"."""
    if math.isinf(high):
        return f"{'>' if above else '>='} {low:g}"
    return f"{'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"


def integer_range(low: int, high: int | None = None) -> str:
    """`check_integer`'s words for a range: "1..256", or ">= 1" without a high."""
    return f"{low}..{high}" if high is not None else f">= {low}"


def _within(words: str) -> str:
    return words if words.startswith(">") else f"in {words}"


@contextmanager
def reported_as(error: type[Seq2SeqError], where: str) -> Iterator[None]:
    """An ArgumentError of the block raised as `error`, its message after `where`: a
    config key out of range is a ConfigError naming the file, in the words of the shared
    checks ("run.yaml: optim.lr must be a finite number > 0, got 0.0")."""
    try:
        yield
    except ArgumentError as err:
        raise error(f"{where}: {err}") from None
