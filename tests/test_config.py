import dataclasses
import re
import typing
from pathlib import Path

import pytest

from conftest import run_bounded
from seq2seq.config import Config, load_config
from seq2seq.errors import ArgumentError, ConfigError, check_number

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["sutskever2014.yaml", "tatoeba-cpu.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.model.reverse_source in ("none", "words", "pieces")


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
    assert cfg.model.reverse_source == "none"


@pytest.mark.parametrize("value, read", [("true", "pieces"), ("false", "none"),
                                         ("words", "words"), ("pieces", "pieces")])
def test_reverse_source_reads_words_pieces_and_the_old_booleans(value, read):
    cfg = load_config(None, [f"model.reverse_source={value}"])
    assert cfg.model.reverse_source == read


def test_reverse_source_refuses_other_values():
    with pytest.raises(ConfigError, match="model.reverse_source must be one of none, words"):
        load_config(None, ["model.reverse_source=letters"])


@pytest.mark.parametrize("text, message", [
    ("model: {hidden: 3}", "unknown key model.hidden"),
    ("modle: {}", "unknown key modle"),
    ("optim: {lr: fast}", "optim.lr must be float, got 'fast'"),
    ("model: {num_layers: 2.5}", "model.num_layers must be int"),
    ("model: {num_layers: true}", "model.num_layers must be int"),
    ("optim: {optimizer: rmsprop}", "optim.optimizer must be one of sgd, adam"),
    ("train: {precision: fp8}", "train.precision must be one of"),
    ("optim: {label_smoothing: 1.0}", "optim.label_smoothing must be a finite number in [0, 1), "
                                      "got 1.0"),
    ("optim: {label_smoothing: -0.1}", "optim.label_smoothing must be a finite number in [0, 1)"),
    ("optim: {label_smoothing: .nan}", "optim.label_smoothing must be a finite number in [0, 1), "
                                       "got nan"),
    ("train: {trim_every: -1}", "train.trim_every must be an integer >= 0, got -1"),
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


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-0.01", "optim.lr must be a finite number > 0, got -0.01"),
    ("optim.lr=0", "optim.lr must be a finite number > 0, got 0.0"),
    ("optim.lr=.nan", "optim.lr must be a finite number > 0, got nan"),
    ("optim.lr=.inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.epochs=0", "optim.epochs must be a finite number > 0, got 0.0"),
    ("optim.clip_norm=-1", "optim.clip_norm must be a finite number >= 0, got -1.0"),
    ("optim.decay_every=0", "optim.decay_every must be a finite number > 0, got 0.0"),
    ("optim.decay_factor=1.5", "optim.decay_factor must be a finite number in (0, 1], got 1.5"),
    ("optim.max_steps=0", "optim.max_steps must be an integer >= 1, got 0"),
    ("optim.label_smoothing=1",
     "optim.label_smoothing must be a finite number in [0, 1), got 1.0"),
    ("model.hidden_size=0", "model.hidden_size must be an integer in 1..16384, got 0"),
    ("model.hidden_size=1000000000",
     "model.hidden_size must be an integer in 1..16384, got 1000000000"),
    ("model.embed_dim=0", "model.embed_dim must be an integer in 1..16384, got 0"),
    ("model.embed_dim=40000", "model.embed_dim must be an integer in 1..16384, got 40000"),
    ("model.num_layers=0", "model.num_layers must be an integer in 1..64, got 0"),
    ("model.num_layers=1000000", "model.num_layers must be an integer in 1..64, got 1000000"),
    ("model.src_vocab=5000000", "model.src_vocab must be an integer in 1..1000000, got 5000000"),
    ("model.tgt_vocab=0", "model.tgt_vocab must be an integer in 1..1000000, got 0"),
    ("model.dropout=2.0", "model.dropout must be a finite number in [0, 1), got 2.0"),
    ("model.init_range=-0.1", "model.init_range must be a finite number >= 0, got -0.1"),
    ("batching.batch_size=0", "batching.batch_size must be an integer >= 1, got 0"),
    ("batching.max_tokens=0", "batching.max_tokens must be an integer >= 1"),
    ("batching.pool_batches=0", "batching.pool_batches must be an integer >= 1"),
    ("train.valid_every=0", "train.valid_every must be an integer >= 1, got 0"),
    ("train.log_every=0", "train.log_every must be an integer >= 1, got 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be an integer >= 1"),
    ("train.threads=0", "train.threads must be an integer >= 1"),
    ("train.loss_chunk=0", "train.loss_chunk must be an integer >= 1, got 0"),
    ("train.trim_every=-1", "train.trim_every must be an integer >= 0"),
    ("train.valid_bleu_sentences=0", "train.valid_bleu_sentences must be an integer >= 1, got 0"),
    ("train.valid_beam=0", "train.valid_beam must be an integer >= 1, got 0"),
    ("train.patience=-1", "train.patience must be an integer >= 0, got -1"),
    ("train.keep_last=-1", "train.keep_last must be an integer >= 0, got -1"),
    ("train.keep_best=-1", "train.keep_best must be an integer >= 0, got -1"),
    ("train.ema=1", "train.ema must be a finite number in [0, 1), got 1.0"),
])
def test_every_numeric_key_has_a_range(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_every_number_key_is_ranged_in_the_words_of_the_library_s_checks(tmp_path):
    sections = typing.get_type_hints(Config)
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = {int, float} & {hints[f.name], *typing.get_args(hints[f.name])}
            assert not kind or "range" in f.metadata, f"{section}.{f.name} has no range"
    # The same words as an argument of the library, after the file's name.
    path = tmp_path / "run.yaml"
    path.write_text("optim: {lr: 0}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    with pytest.raises(ArgumentError) as argument:
        check_number("optim.lr", 0.0, above=True)
    assert str(raised.value) == f"{path}: {argument.value}"


def test_floats_written_without_a_dot_are_floats(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; the config takes it as the number it is.
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 0.001
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 5E-4, clip_norm: 1e1}\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.clip_norm) == (0.0005, 10.0)
    with pytest.raises(ConfigError, match="optim.lr must be float, got '1e-3x'"):
        load_config(None, ["optim.lr=1e-3x"])


def test_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_config(tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["train.valid_metrics=[ppl, rouge]"], "train.valid_metrics must be one of ppl, bleu, "
                                           "got 'rouge'"),
    (["train.valid_metrics=bleu"], "train.valid_metrics must be a list, got 'bleu'"),
    (["train.valid_metrics=[]"], "train.valid_metrics must name ppl and/or bleu once each"),
    (["train.valid_metrics=[bleu, bleu]"], "must name ppl and/or bleu once each"),
    (["train.best_metric=bleu"], "train.best_metric=bleu must be one of train.valid_metrics "
                                 "(ppl)"),
])
def test_validation_metrics_are_checked_together(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
    cfg = load_config(None, ["train.valid_metrics=[ppl, bleu]", "train.best_metric=bleu"])
    assert (cfg.train.valid_metrics, cfg.train.best_metric) == (["ppl", "bleu"], "bleu")


def _billion_laughs(levels: int = 9) -> str:
    """~400 bytes of YAML whose aliases expand to 9 ** levels strings."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel: {{hidden_size: *l{levels - 1}}}\n"


def test_a_yaml_bomb_deep_nesting_or_a_shared_reference_value_is_a_quick_config_error(
        tmp_path):
    """A billion-laughs YAML, one nested 5,000 deep, and a config dict (as a crafted
    checkpoint holds) whose value is a list of 9 ** 9 shared references: each a one-line
    ConfigError, in a child process capped at 2 GB of address space, its peak RSS < 1 GB."""
    (tmp_path / "bomb.yaml").write_text(_billion_laughs())
    (tmp_path / "deep.yaml").write_text("model: {hidden_size: " + "[" * 5000 + "]" * 5000 + "}")
    out, rss_mb = run_bounded(f"""
        from seq2seq.config import config_from_dict, load_config
        from seq2seq.errors import ConfigError
        for path in [{str(tmp_path / "bomb.yaml")!r}, {str(tmp_path / "deep.yaml")!r}]:
            try:
                load_config(path)
            except ConfigError as err:
                print(str(err).replace("\\n", " | ")[:300])
        value = ["lol"]
        for _ in range(9):
            value = [value] * 9
        try:
            config_from_dict({{"model": {{"hidden_size": value}}}}, where="ckpt.pt (config)")
        except ConfigError as err:
            print(err)
    """)
    bomb, deep, shared = out.splitlines()
    assert "bomb.yaml: not valid YAML" in bomb and "aliases (*name) are not allowed" in bomb
    assert "deep.yaml: not valid YAML" in deep and "nested deeper than 32 levels" in deep
    assert shared.startswith("ckpt.pt (config): model.hidden_size must be int, got [[[")
    assert len(shared) < 200 and rss_mb < 1024
