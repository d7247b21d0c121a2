"""The server's limits, each written once: a dataclass field whose metadata holds its
`seq2seq serve` option, help text and range. The dataclasses check their fields against
those ranges (`ArgumentError` naming the option), the CLI makes one option per field, and
a test holds the README's table of server options to them."""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import Any

from seq2seq.errors import (
    MAX_BEAM,
    ArgumentError,
    check_integer,
    check_number,
    integer_range,
    number_range,
)


def limit(default: Any, flag: str, help: str, low: float = 1, high: float | None = None,
          above: bool = False, metavar: str = "N") -> Any:
    """A field with a default and its option: `flag`, `help`, and its range: an integer in
    low..high (no `high`: >= low), a number >= low (> low if `above`)."""
    return field(default=default, metadata={"flag": flag, "help": help, "low": low,
                                            "high": high, "above": above, "metavar": metavar})


def allowed_range(f: Field) -> str:
    """A field's range in the words of its error message (`errors.integer_range`,
    `number_range`): "1..256", ">= 1", "> 0"; "" for a list."""
    low, high = f.metadata["low"], f.metadata["high"]
    if isinstance(f.default, int):
        return integer_range(low, high)
    if isinstance(f.default, float):
        return number_range(low, math.inf if high is None else high, f.metadata["above"])
    return ""


def shown_default(f: Field) -> str:
    """A field's default as the option's help and the README show it: "5" for 5.0, "none"
    for an empty list."""
    if isinstance(f.default, float):
        return f"{f.default:g}"
    return str(f.default) if f.default != () else "none"


def check_fields(limits: Any) -> None:
    """ArgumentError naming the first number field of `limits` outside its range and its
    option."""
    for f in fields(limits):
        value, meta, why = getattr(limits, f.name), f.metadata, f" ({f.metadata['flag']})"
        if isinstance(f.default, int):
            check_integer(f.name, value, meta["low"], meta["high"], why)
        elif isinstance(f.default, float):
            check_number(f.name, value, meta["low"],
                         math.inf if meta["high"] is None else meta["high"],
                         above=meta["above"], why=why)


@dataclass
class Limits:
    """What one request may ask for; larger requests are refused with a JSON error."""

    max_body_bytes: int = limit(1_000_000, "--max-body-bytes", "largest request body")
    max_sentences: int = limit(256, "--max-sentences", "sentences per request")
    max_chars: int = limit(1000, "--max-chars", "characters per sentence")
    # this server's own cap, below what `check_decoding` allows
    max_beam: int = limit(64, "--max-beam", "widest beam a request may ask for",
                          high=MAX_BEAM, metavar="K")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class Guard:
    """What keeps one client from starving the others: connection and time limits, a
    bounded queue, and a bound on the work one request may ask for."""

    max_connections: int = limit(
        512, "--max-connections", "connections open at once; when full, the one idle longest "
        "(waiting for a request head) is closed for a new one, and if none is idle the new "
        "one is closed on arrival")
    header_timeout_s: float = limit(
        10.0, "--header-timeout", "seconds a connection may take to send a request head, "
        "also when idle between requests", low=0, above=True, metavar="S")
    body_timeout_s: float = limit(
        30.0, "--body-timeout", "seconds to wait for the next chunk of a request body; "
        "then 408", low=0, above=True, metavar="S")
    max_queued_sentences: int = limit(
        2048, "--max-queue", "sentences waiting to be translated; beyond, 503 with "
        "Retry-After")
    # The model steps one request may cost, summed over its sentences: a translation's beam
    # x output length budget, about its decoder steps x hypotheses; a scored pair's steps
    # of its teacher-forced reading, each a softmax row as a hypothesis step is.
    max_cost: int = limit(
        1_000_000, "--max-cost", "beam x (2 x source tokens + 10) summed over a request's "
        "sentences; for /score, source + target tokens + 1 summed over the pairs")
    # Others get 400: a web page whose name was rebound to this address cannot read the API.
    allowed_hosts: tuple[str, ...] = limit(
        (), "--allowed-hosts", "Host header names served besides localhost and IP "
        "addresses (* = any); others get 400", metavar="NAME")

    def __post_init__(self) -> None:
        check_fields(self)
        if isinstance(self.allowed_hosts, str) or \
                not all(isinstance(h, str) and h for h in self.allowed_hosts):
            raise ArgumentError("allowed_hosts must be a list of host names (--allowed-hosts)",
                                argument="allowed_hosts")
        self.allowed_hosts = tuple(h.lower() for h in self.allowed_hosts)


@dataclass
class Batching:
    """How long the batch worker waits for company, and how much it takes at once."""

    wait_ms: float = limit(5.0, "--batch-wait-ms", "how long a request waits for others to "
                           "share its batch", low=0, metavar="MS")
    max_sentences: int = limit(64, "--max-batch-sentences",
                               "sentences decoded together at most")

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def off(cls) -> Batching:
        """One request per model call, no waiting: the baseline for benchmarks."""
        return cls(wait_ms=0.0, max_sentences=1)


SETTINGS = (Limits, Guard, Batching)  # each field of each is a `seq2seq serve` option
