"""Typed training configuration: YAML files plus `section.key=value` overrides.

A config file reads like the paper's hyper-parameter table::

    model:    {embed_dim: 1000, hidden_size: 1000, num_layers: 4, reverse_source: true}
    batching: {batch_size: 128}
    optim:    {optimizer: sgd, lr: 0.7, clip_norm: 5.0, epochs: 7.5, decay_start: 5.0}

Every key is checked: an unknown key, a value of the wrong type or a value outside its
allowed set raises `ConfigError` naming the key (`optim.lr`) and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seq2seq.errors import ConfigError


@dataclass
class ModelConfig:
    embed_dim: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.0
    reverse_source: bool = True
    init_range: float = 0.08
    # The vocabulary sizes this preset expects `prepare` to produce. Training always takes
    # the sizes of the data directory it is given; these are used by `train --dry-run`
    # when no data directory is given.
    src_vocab: int = 160_000
    tgt_vocab: int = 80_000


@dataclass
class BatchingConfig:
    batch_size: int = 128  # sentences per batch (the paper's 128); unused if max_tokens is set
    max_tokens: int | None = None  # token budget per batch (source + target, padding included)
    pool_batches: int = 100  # how many batches' worth of data are sorted by length together


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.7
    clip_norm: float = 5.0  # rescale the gradient to this L2 norm when it is larger; 0 = off
    epochs: float = 7.5
    decay_start: float = 5.0  # epochs after which the lr starts decaying
    decay_every: float = 0.5  # epochs between two decays
    decay_factor: float = 0.5
    max_steps: int | None = None  # stop after this many updates (overrides epochs)
    # Train against (1 - eps) x onehot + eps / vocab instead of the onehot target (not in
    # the paper; 0 = off). Perplexities are still of the plain NLL.
    label_smoothing: float = field(default=0.0, metadata={"range": (0.0, 1.0)})


@dataclass
class TrainConfig:
    seed: int = 1
    log_every: int = 100  # updates between two log lines
    valid_every: int = 1000  # updates between two validations (and checkpoints)
    checkpoint_every: int | None = None  # updates between checkpoints; default valid_every
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # intra-op CPU threads; default: what torch picks
    loss_chunk: int = 4096  # target positions per chunk of the output softmax
    # updates between returns of freed CPU memory to the OS (glibc's malloc_trim); 0 =
    # never: about as fast, ~100 MB more (seq2seq.device.release_free_memory)
    trim_every: int = field(default=100, metadata={"range": (0, None)})


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
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw, where=str(path) if path else "config")


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Build a `Config` from nested dicts, checking every key and type."""
    return _build(Config, raw, prefix="", where=where)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. optim.lr=0.5")
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"override {item!r}: {parts[0]} is not a section")
    section[parts[1]] = yaml.safe_load(value) if value.strip() else None


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(names))})"
        )
    values = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.", where)
        else:
            values[name] = _check(value, hint, f"{prefix}{name}", where)
            _check_range(values[name], fields[name].metadata.get("range"), f"{prefix}{name}",
                         where)
    return cls(**values)


def _check_range(value: Any, bounds: tuple | None, key: str, where: str) -> None:
    """`bounds` (low, high): low <= value, and value < high (None: no bound)."""
    if bounds is None or value is None:
        return
    low, high = bounds
    if not (value >= low and (high is None or value < high)):
        allowed = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ConfigError(f"{where}: {key} must be {allowed}, got {value!r}")


def _check(value: Any, hint: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _check(value, inner, key, where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{where}: {key} must be one of {', '.join(map(str, allowed))}, got {value!r}"
            )
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where}: {key} must be {hint.__name__}, got {value!r}")
    return value
