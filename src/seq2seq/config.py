"""Typed training configuration: YAML files plus `section.key=value` overrides.

A config file reads like the paper's hyper-parameter table::

    model:    {embed_dim: 1000, hidden_size: 1000, num_layers: 4, reverse_source: words}
    batching: {batch_size: 128}
    optim:    {optimizer: sgd, lr: 0.7, clip_norm: 5.0, epochs: 7.5, decay_start: 5.0}

Every key is checked: an unknown key, a value of the wrong type or a value outside its
allowed set raises `ConfigError` naming the key (`optim.lr`) and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seq2seq.errors import ConfigError, check_integer, check_number, reported_as, shown

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# Upper bounds of the model's sizes: far beyond any model this toolkit trains (the paper's
# are 1000, 4 and 160,000), low enough that a typo or a crafted checkpoint is a ConfigError
# naming the key, not an allocation of terabytes.
MAX_WIDTH = 16_384  # embed_dim, hidden_size
MAX_LAYERS = 64
MAX_VOCAB = 1_000_000


def at_least(low: float) -> dict:
    """Field metadata: the value must be >= low."""
    return {"range": {"low": low}}


def between(low: float, high: float) -> dict:
    """Field metadata: the value must be in [low, high]."""
    return {"range": {"low": low, "high": high}}


def above(low: float, high: float | None = None) -> dict:
    """Field metadata: the value must be > low (and <= high, if given)."""
    return {"range": {"low": low, "high": high, "above": True}}


def fraction() -> dict:
    """Field metadata: a probability-like value in [0, 1)."""
    return {"range": {"low": 0.0, "high": 1.0, "below": True}}


@dataclass
class ModelConfig:
    embed_dim: int = field(default=256, metadata=between(1, MAX_WIDTH))
    hidden_size: int = field(default=512, metadata=between(1, MAX_WIDTH))
    num_layers: int = field(default=2, metadata=between(1, MAX_LAYERS))
    dropout: float = field(default=0.0, metadata=fraction())
    # How the encoder reads the source: "words" (the paper's reversal: the words' order
    # reversed, each word's pieces kept in order), "pieces" (token by token), or "none".
    # true / false, this key's values before words and pieces were told apart, read as
    # "pieces" / "none" (what they did then).
    reverse_source: Literal["none", "words", "pieces"] = "words"
    init_range: float = field(default=0.08, metadata=at_least(0.0))
    # The vocabulary sizes this preset expects `prepare` to produce. Training always takes
    # the sizes of the data directory it is given; these are used by `train --dry-run`
    # when no data directory is given.
    src_vocab: int = field(default=160_000, metadata=between(1, MAX_VOCAB))
    tgt_vocab: int = field(default=80_000, metadata=between(1, MAX_VOCAB))


@dataclass
class BatchingConfig:
    # sentences per batch (the paper's 128); unused if max_tokens is set
    batch_size: int = field(default=128, metadata=at_least(1))
    # token budget per batch (source + target, padding included)
    max_tokens: int | None = field(default=None, metadata=at_least(1))
    # how many batches' worth of data are sorted by length together
    pool_batches: int = field(default=100, metadata=at_least(1))


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=0.7, metadata=above(0.0))
    # rescale the gradient to this L2 norm when it is larger; 0 = off
    clip_norm: float = field(default=5.0, metadata=at_least(0.0))
    epochs: float = field(default=7.5, metadata=above(0.0))
    decay_start: float = field(default=5.0, metadata=at_least(0.0))  # epochs before decaying
    decay_every: float = field(default=0.5, metadata=above(0.0))  # epochs between decays
    decay_factor: float = field(default=0.5, metadata=above(0.0, 1.0))
    # stop after this many updates (overrides epochs)
    max_steps: int | None = field(default=None, metadata=at_least(1))
    # Train against (1 - eps) x onehot + eps / vocab instead of the onehot target (not in
    # the paper; 0 = off). Perplexities are still of the plain NLL.
    label_smoothing: float = field(default=0.0, metadata=fraction())


# The names of devices and precisions, declared once: the config's checks, the CLI's
# choices, defaults and help, and seq2seq.device read them from here (this module imports
# no torch). The first of each is the default.
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16", "fp16"]  # training and decoding
DEVICES: tuple[str, ...] = typing.get_args(Device)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
DECODE_PRECISIONS = (*PRECISIONS, "int8")  # int8: decoding, on the CPU only
DEFAULT_DEVICE, DEFAULT_PRECISION = DEVICES[0], PRECISIONS[0]
# What each precision does, for the help of `--precision` (its speed and BLEU per CPU kind
# are in bench/RESULTS.md, never here: they change with every run)
PRECISION_HELP = {
    "fp32": "float32 throughout",
    "bf16": "faster on CPUs with AVX-512 BF16 or AMX (elsewhere it runs as fp32, warned)",
    "fp16": "needs CUDA",
    "int8": "the CPU only, the LSTMs and the output layer quantized when loading",
}

# The defaults of a vocabulary shortlist (`seq2seq.shortlist.build_shortlist`, whose
# docstring says why these), declared here for the CLI's options (no torch imported).
SHORTLIST_TRANSLATIONS = 50  # target pieces per source piece
SHORTLIST_FREQUENT = 500  # most frequent target pieces
SHORTLIST_ITERATIONS = 5  # EM rounds of IBM Model 1


@dataclass
class TrainConfig:
    seed: int = field(default=1, metadata=at_least(0))
    log_every: int = field(default=100, metadata=at_least(1))  # updates between log lines
    # updates between two validations (and checkpoints)
    valid_every: int = field(default=1000, metadata=at_least(1))
    # updates between checkpoints; default valid_every
    checkpoint_every: int | None = field(default=None, metadata=at_least(1))
    precision: Precision = DEFAULT_PRECISION
    device: Device = DEFAULT_DEVICE
    # intra-op CPU threads (set by the entry point: `seq2seq train`, the benchmarks, via
    # seq2seq.device.setup_process; a Trainer built from Python leaves them); default: torch's
    threads: int | None = field(default=None, metadata=at_least(1))
    # target positions per chunk of the output softmax
    loss_chunk: int = field(default=4096, metadata=at_least(1))
    # bf16 training on a CPU with AVX-512: seq2seq's own kernels between PyTorch's bf16
    # products, for the LSTMs' gate arithmetic and the output softmax's gradient
    # (seq2seq.bf16; faster than oneDNN's fused LSTM: bench/RESULTS.md); false: PyTorch's
    # code (nn.LSTM). Elsewhere it changes nothing
    bf16_kernels: bool = True
    # updates between returns of freed CPU memory to the OS (glibc's malloc_trim); 0 =
    # never: about as fast, ~100 MB more (seq2seq.device.release_free_memory)
    trim_every: int = field(default=100, metadata=at_least(0))
    # a non-finite loss or gradient: stop the run (the last good checkpoints stay), or skip
    # the batch (counted and warned)
    nonfinite: Literal["stop", "skip"] = "stop"
    # What each validation measures: perplexity, and BLEU of the first valid_bleu_sentences
    # validation pairs decoded with beam valid_beam (1 = greedy), as `seq2seq evaluate` does
    valid_metrics: list[Literal["ppl", "bleu"]] = field(default_factory=lambda: ["ppl"])
    valid_bleu_sentences: int = field(default=500, metadata=at_least(1))
    valid_beam: int = field(default=1, metadata=at_least(1))
    # the metric that chooses best.pt and that early stopping watches (one of valid_metrics)
    best_metric: Literal["ppl", "bleu"] = "ppl"
    # stop after this many validations in a row without a new best; 0 = never
    patience: int = field(default=0, metadata=at_least(0))
    # numbered checkpoints kept beside last.pt / best.pt: the newest keep_last (step-N.pt,
    # at every checkpoint) and the best keep_best (best-N.pt, by best_metric); 0 = none
    keep_last: int = field(default=0, metadata=at_least(0))
    keep_best: int = field(default=0, metadata=at_least(0))
    # decay of an exponential moving average of the weights, kept during training:
    # avg = decay * avg + (1 - decay) * weights after each update; validation, best.pt and
    # the numbered checkpoints then use the average (last.pt keeps both). null = off
    ema: float | None = field(default=None, metadata=fraction())
    # scalars (loss, perplexity, BLEU, lr, gradient norm, tok/s) to RUN_DIR/tb/ for
    # TensorBoard (needs the optional extra: pip install seq2seq[tensorboard])
    tensorboard: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults if `path` is None) and apply `key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, not a config file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: unreadable config file ({err})") from None
        try:
            raw = yaml.load(text, ConfigLoader) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw, where=str(path) if path else "config")


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Build a `Config` from nested dicts, checking every key and type."""
    cfg = _build(Config, raw, prefix="", where=where)
    _check_together(cfg, where)
    return cfg


def _check_together(cfg: Config, where: str) -> None:
    """The checks that read two keys at once."""
    t = cfg.train
    if len(set(t.valid_metrics)) != len(t.valid_metrics) or not t.valid_metrics:
        raise ConfigError(f"{where}: train.valid_metrics must name ppl and/or bleu once each, "
                          f"got {t.valid_metrics!r}")
    if t.best_metric not in t.valid_metrics:
        raise ConfigError(f"{where}: train.best_metric={t.best_metric} must be one of "
                          f"train.valid_metrics ({', '.join(t.valid_metrics)})")


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. optim.lr=0.5")
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"override {item!r}: {parts[0]} is not a section")
    try:
        section[parts[1]] = yaml.load(value, ConfigLoader) if value.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem})"
                          ) from None


MAX_YAML_DEPTH = 32  # a config is 2 levels deep


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without what a config never needs and a crafted file abuses:
    aliases (`*name`; 400 bytes of nested aliases expand to billions of values, the
    "billion laughs") and nesting deeper than MAX_YAML_DEPTH (PyYAML composes nodes
    recursively: 5,000 levels overflow Python's stack)."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._refuse("aliases (*name) are not allowed in a config")
        if self._depth >= MAX_YAML_DEPTH:
            self._refuse(f"nested deeper than {MAX_YAML_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refuse(self, problem: str) -> None:
        raise yaml.composer.ComposerError(None, None, problem, self.peek_event().start_mark)


# Values of earlier versions of a key and what they mean now.
LEGACY_VALUES = {"model.reverse_source": {True: "pieces", False: "none"}}


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k if isinstance(k, str) else shown(k) for k in set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {prefix}{unknown[0][:80]} "
                          f"(allowed: {', '.join(sorted(names))})")
    values = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.", where)
        else:
            legacy = LEGACY_VALUES.get(f"{prefix}{name}", {})
            if isinstance(value, bool) and value in legacy:
                value = legacy[value]
            values[name] = _check(value, hint, f"{prefix}{name}", where)
            _check_range(values[name], fields[name].metadata.get("range"), f"{prefix}{name}",
                         where)
    return cls(**values)


def _check_range(value: Any, bounds: dict | None, key: str, where: str) -> None:
    """ConfigError naming `where` and `key` unless `value` is within `bounds` (the metadata
    of `at_least`, `between`, `above`, `fraction`): the range checks of the library's
    arguments (`errors.check_integer`, `check_number`), in their words. Every number key
    has bounds (a test holds them to it)."""
    if value is None or bounds is None:
        return
    high = bounds.get("high")
    with reported_as(ConfigError, where):
        if isinstance(value, int):  # `_check` gave an int key an int, a float key a float
            check_integer(key, value, bounds["low"], high)
        else:
            check_number(key, value, bounds["low"], math.inf if high is None else high,
                         above=bounds.get("above", False), below=bounds.get("below", False))


def _check(value: Any, hint: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _check(value, inner, key, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_check(v, inner, key, where) for v in value]
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{where}: {key} must be one of {', '.join(map(str, allowed))}, got {shown(value)}"
            )
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where}: {key} must be {hint.__name__}, got {shown(value)}")
    return value
