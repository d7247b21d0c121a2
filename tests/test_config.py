import re
from pathlib import Path

import pytest

from seq2seq.config import load_config
from seq2seq.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["sutskever2014.yaml", "tatoeba-cpu.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model.reverse_source


def test_paper_preset_is_the_paper():
    cfg = load_config(CONFIGS / "sutskever2014.yaml")
    m, o = cfg.model, cfg.optim
    assert (m.num_layers, m.hidden_size, m.embed_dim) == (4, 1000, 1000)
    assert (m.src_vocab, m.tgt_vocab, m.init_range) == (160_000, 80_000, 0.08)
    assert (o.optimizer, o.lr, o.clip_norm, o.epochs, o.decay_start, o.decay_every) == (
        "sgd", 0.7, 5.0, 7.5, 5.0, 0.5)
    assert cfg.batching.batch_size == 128


def test_overrides_are_typed():
    cfg = load_config(CONFIGS / "tatoeba-cpu.yaml", ["optim.lr=0.5", "optim.max_steps=10",
                                                     "model.reverse_source=false"])
    assert cfg.optim.lr == 0.5 and cfg.optim.max_steps == 10
    assert cfg.model.reverse_source is False


@pytest.mark.parametrize("text, message", [
    ("model: {hidden: 3}", "unknown key model.hidden"),
    ("modle: {}", "unknown key modle"),
    ("optim: {lr: fast}", "optim.lr must be float, got 'fast'"),
    ("model: {num_layers: 2.5}", "model.num_layers must be int"),
    ("model: {num_layers: true}", "model.num_layers must be int"),
    ("optim: {optimizer: rmsprop}", "optim.optimizer must be one of sgd, adam"),
    ("train: {precision: fp8}", "train.precision must be one of"),
    ("optim: {label_smoothing: 1.0}", r"optim.label_smoothing must be in [0.0, 1.0), got 1.0"),
    ("optim: {label_smoothing: -0.1}", "optim.label_smoothing must be in"),
    ("optim: {label_smoothing: .nan}", "optim.label_smoothing must be in"),
    ("train: {trim_every: -1}", "train.trim_every must be >= 0, got -1"),
    ("model: 3", "model must be a mapping"),
    ("[1, 2]", "expected a mapping"),
    ("model: {a: [}", "not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["lr=3"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
