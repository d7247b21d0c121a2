import copy
import math
import subprocess
import zipfile

import pytest
import torch

from conftest import run_bounded, tiny_config
from seq2seq.checkpoint import (
    BUNDLE_KEYS,
    FORMAT,
    TRAINING_KEYS,
    average_checkpoints,
    check_ensemble,
    check_resumable,
    load_bundle,
    load_checkpoint,
    model_bundle,
    save_checkpoint,
)
from seq2seq.config import config_from_dict
from seq2seq.data import DataDir
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.model import Seq2Seq
from seq2seq.train import Trainer
from seq2seq.translator import Translator

CPU = torch.device("cpu")


def test_truncated_checkpoint(trained_run, tmp_path):
    bad = tmp_path / "cut.pt"
    bad.write_bytes((trained_run / "best.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("content", [{"weights": torch.zeros(2)}, [1, 2], "text"])
def test_foreign_torch_file(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="other.pt: not a seq2seq checkpoint"):
        load_checkpoint(path)


def test_garbage_and_missing(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_no_arbitrary_unpickling(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "seq2seq-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_save_replaces_atomically(tmp_path, trained_run):
    path = tmp_path / "x.pt"
    state = load_checkpoint(trained_run / "best.pt")
    state.pop("format")
    state.pop("version")
    save_checkpoint(state, path)
    save_checkpoint(state, path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert load_checkpoint(path)["step"] == state["step"]


def test_a_save_never_follows_a_planted_symbolic_link(tmp_path, trained_run):
    import os

    state = load_checkpoint(trained_run / "best.pt")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / f".last.pt.tmp-{os.getpid()}").symlink_to(victim)  # the old temp name
    (tmp_path / "best.pt").symlink_to(victim)
    for name in ("last.pt", "best.pt"):
        save_checkpoint(state, tmp_path / name)
        assert not (tmp_path / name).is_symlink()
        assert load_checkpoint(tmp_path / name)["step"] == state["step"]
    assert victim.read_text() == "precious"


def test_ensemble_needs_same_vocabularies(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    state["tgt_vocab"] = state["tgt_vocab"][:-1] + ["zzz"]
    for key in ("format", "version"):
        state.pop(key)
    save_checkpoint(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="tgt vocab differs"):
        Translator.load([trained_run / "best.pt", tmp_path / "other.pt"], device="cpu")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (root only; skipped elsewhere), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_checkpoint(small_disk):
    small = {"config": {}, "model": {"w": torch.zeros(1000)}, "src_vocab": [], "tgt_vocab": [],
             "tokenizer": {}, "max_len": 10}
    save_checkpoint(small, small_disk / "last.pt")
    before = (small_disk / "last.pt").read_bytes()
    big = {**small, "model": {"w": torch.zeros(1_000_000)}}  # 4 MB: does not fit
    with pytest.raises(CheckpointError, match="no space left on the device"):
        save_checkpoint(big, small_disk / "last.pt")
    assert (small_disk / "last.pt").read_bytes() == before
    assert [p.name for p in small_disk.iterdir()] == ["last.pt"]  # no temp file left


def test_translate_output_on_a_full_disk_keeps_the_old_file(small_disk):
    from seq2seq.errors import DataError
    from seq2seq.text import atomic_output

    out = small_disk / "out.txt"
    out.write_text("old\n")
    with pytest.raises(DataError, match="no space left on the device; nothing was replaced"):
        with atomic_output(out) as f:
            for _ in range(100):
                f.write("x" * 100_000)
    assert out.read_text() == "old\n"
    assert [p.name for p in small_disk.iterdir()] == ["out.txt"]


def test_a_figure_on_a_full_disk_names_the_file(small_disk):
    from matplotlib.figure import Figure

    from seq2seq.analysis import save_figure
    from seq2seq.errors import DataError

    fig = Figure()
    fig.subplots().plot(range(100))
    with open(small_disk / "filler", "wb") as f:  # fill the disk
        try:
            while True:
                f.write(b"x" * 65536)
                f.flush()
        except OSError:
            pass
    with pytest.raises(DataError, match=f"{small_disk / 'fig.png'}: cannot write the figure"):
        save_figure(fig, small_disk / "fig")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_garbage_sentencepiece_model_in_a_checkpoint(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    state["tokenizer"]["src"] = {"kind": "sentencepiece", "lang": "en", "lowercase": False,
                                 "sp_model": b"not a model"}
    save_checkpoint(state, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="crafted.pt: its tokenizer settings are damaged"):
        Translator.load(tmp_path / "crafted.pt", device="cpu")


def test_a_model_bundle_round_trips(data_dir, tmp_path):
    data, cfg = DataDir(data_dir), config_from_dict(tiny_config())
    model = Seq2Seq(len(data.src_vocab), len(data.tgt_vocab), cfg.model)
    save_checkpoint(model_bundle(cfg, model, data, step=7, best_valid_ppl=12.5),
                    tmp_path / "b.pt")
    b = load_bundle(tmp_path / "b.pt", CPU)
    assert (b.config, b.max_len, b.step, b.best_valid_ppl) == (cfg, data.max_len, 7, 12.5)
    assert (b.src_vocab, b.tgt_vocab) == (data.src_vocab, data.tgt_vocab)
    assert b.tgt_tokenizer.to_dict() == data.tokenizer("tgt").to_dict()
    assert not b.model.training
    for name, weight in model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], weight), name
    with pytest.raises(CheckpointError, match="b.pt: lacks optimizer, scaler, data_stream, "
                                              r"rng, elapsed, selection, ema \(not a "
                                              r"training checkpoint\)"):
        load_checkpoint(tmp_path / "b.pt", training=True)


def test_a_training_checkpoint_adds_what_resuming_needs(trained_run):
    header = {"format", "version"}
    assert load_checkpoint(trained_run / "best.pt").keys() == {*BUNDLE_KEYS, *header}
    last = load_checkpoint(trained_run / "last.pt", training=True)
    assert last.keys() == {*BUNDLE_KEYS, *TRAINING_KEYS, *header}
    assert last["data_stream"].keys() == {"epoch", "batch"}


def test_an_unknown_version_is_refused_naming_the_file(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    torch.save({**state, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"future.pt: checkpoint version 99 \(this "
                                              r"seq2seq reads versions 1, 2, 3\)"):
        load_checkpoint(tmp_path / "future.pt")


def test_ensemble_needs_same_tokenizers(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    state["tokenizer"]["tgt"]["lowercase"] = not state["tokenizer"]["tgt"]["lowercase"]
    save_checkpoint(state, tmp_path / "lower.pt")
    paths = [trained_run / "best.pt", tmp_path / "lower.pt"]
    with pytest.raises(CheckpointError, match=r"lower.pt: its tokenizer differs from "
                                              r".*best.pt's; an ensemble needs models"):
        check_ensemble([load_bundle(p, CPU) for p in paths], paths)


def test_resume_check_names_the_changed_key_and_allows_resumable_ones(trained_run, data_dir):
    path = trained_run / "last.pt"
    state = load_checkpoint(path, training=True)
    saved = config_from_dict(state["config"])
    data = DataDir(data_dir)
    check_resumable(state, config_from_dict(tiny_config(optim={"max_steps": 500})), data, path)
    bigger = tiny_config(model={"hidden_size": 48}, optim={"max_steps": 120},
                         train={"valid_every": 60})
    with pytest.raises(ConfigError, match="last.pt: this run was started with "
                                          "model.hidden_size=32, now 48"):
        check_resumable(state, config_from_dict(bigger), data, path)
    state["tgt_vocab"] = state["tgt_vocab"][:-1] + ["zzz"]
    with pytest.raises(DataError, match="last.pt: was trained on data with other vocab"):
        check_resumable(state, saved, data, path)


@pytest.mark.parametrize("version", [1, 2])
def test_older_checkpoints_still_translate_and_resume_exactly(data_dir, tmp_path, version):
    def run(steps, out):
        cfg = tiny_config(optim={"max_steps": steps}, model={"dropout": 0.1},
                          train={"valid_every": 4})
        Trainer(config_from_dict(cfg), data_dir, out).train()

    run(8, tmp_path / "whole")
    run(4, tmp_path / "old")
    for name in ("last.pt", "best.pt"):  # as that version wrote them
        state = load_checkpoint(tmp_path / "old" / name)
        if "data_stream" in state:
            del state["selection"], state["ema"]
        if "data_stream" in state and version == 1:
            state["position"] = {"step": state["step"], **state.pop("data_stream")}
            del state["elapsed"]  # absent before 2026-12
        torch.save({**state, "format": FORMAT, "version": version}, tmp_path / "old" / name)
    Translator.load(tmp_path / "old" / "best.pt", device="cpu")
    run(8, tmp_path / "old")
    whole, resumed = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "old"))
    assert resumed["version"] == 3 and resumed["step"] == 8
    for name, weight in whole["model"].items():
        assert torch.equal(resumed["model"][name], weight), name



def _with_weights(path, out, change):
    """A copy of the checkpoint `path` at `out`, its state passed through `change`."""
    state = load_checkpoint(path)
    change(state)
    save_checkpoint(state, out)
    return out


def test_averaging_two_checkpoints_gives_their_exact_mean(trained_run, tmp_path):
    first = trained_run / "best.pt"
    second = _with_weights(first, tmp_path / "b.pt", lambda s: s["model"].update(
        {k: torch.randn_like(w) for k, w in s["model"].items()}))
    mean = average_checkpoints([first, second])
    a, b = load_checkpoint(first)["model"], load_checkpoint(second)["model"]
    for name, w in mean["model"].items():
        exact = ((a[name].double() + b[name].double()) / 2).float()
        assert w.dtype == a[name].dtype and torch.equal(w, exact), name
    save_checkpoint(mean, tmp_path / "mean.pt")
    bundle = load_bundle(tmp_path / "mean.pt", CPU)  # a normal model bundle
    assert bundle.step == load_checkpoint(first)["step"] and math.isnan(bundle.best_valid_ppl)
    assert average_checkpoints([first, first])["model"]["encoder.embed.weight"].equal(
        a["encoder.embed.weight"])


@pytest.mark.parametrize("change, what", [
    (lambda s: s["tgt_vocab"].reverse(), "its tgt vocab differs"),
    (lambda s: s["tokenizer"]["src"].update(lowercase=True), "its tokenizer differs"),
    (lambda s: s["config"]["model"].update(reverse_source="none"),
     r"its source reversal \(model.reverse_source\) differs"),
    (lambda s: s["model"].update({"encoder.embed.weight": torch.zeros(3, 3)}),
     "its weight names or shapes differ"),
    (lambda s: s["model"].pop("encoder.embed.weight"), "its weight names or shapes differ"),
])
def test_averaging_refuses_checkpoints_of_different_models(trained_run, tmp_path, change,
                                                           what):
    other = _with_weights(trained_run / "best.pt", tmp_path / "other.pt", change)
    with pytest.raises(CheckpointError, match=rf"other.pt: {what}.* from .*best.pt's; only "
                                              "checkpoints of the same model average"):
        average_checkpoints([trained_run / "best.pt", other])


def _edited(state: dict, path, model: dict | None = None, **top) -> str:
    """`state` with some model config keys and top-level keys changed, saved at `path`."""
    edited = copy.deepcopy(state)
    edited["config"]["model"].update(model or {})
    edited.update(top)
    save_checkpoint(edited, path)
    return str(path)


def _deflate_bomb(good, path) -> str:
    """`good`'s archive, compressed, plus a part that inflates to 200 MB (file: ~0.2 MB)."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for part in src.infolist():
            out.writestr(part.filename, src.read(part))
        out.writestr("archive/data/bomb", bytes(200 << 20))
    return str(path)


def test_a_checkpoint_is_checked_before_its_model_is_built(trained_run, tmp_path):
    """Edited checkpoints: sizes out of the config's ranges, sizes in range that do not fit
    the weights (12,000 would be 9 GB of LSTM), 2M words for a 2,000-row embedding, a
    deflate bomb: each a one-line error naming the file, in a child capped at 2 GB of
    address space whose peak RSS stays under 1 GB."""
    state = load_checkpoint(trained_run / "best.pt")
    for key in ("format", "version"):
        state.pop(key)
    cases = {
        _edited(state, tmp_path / "h1e9.pt", {"hidden_size": 10**9}):
            "h1e9.pt (config): model.hidden_size must be an integer in 1..16384",
        _edited(state, tmp_path / "h40k.pt", {"hidden_size": 40_000}):
            "h40k.pt (config): model.hidden_size must be an integer in 1..16384",
        _edited(state, tmp_path / "h12k.pt", {"hidden_size": 12_000}):
            "h12k.pt: its weights do not fit its config and vocabularies: "
            "decoder.lstm.bias_hh_l0 is (128,), needed (48000,) (embed_dim 24, "
            "hidden_size 12000, num_layers 2,",
        _edited(state, tmp_path / "layers.pt", {"num_layers": 10**6}):
            "layers.pt (config): model.num_layers must be an integer in 1..64",
        _edited(state, tmp_path / "three.pt", {"num_layers": 3}):
            "three.pt: its weights do not fit its config and vocabularies: "
            "decoder.lstm.bias_hh_l2 is missing, needed (128,)",
        _edited(state, tmp_path / "words.pt", src_vocab=["w"] * 2_000_000):
            "words.pt: its weights do not fit its config and vocabularies: "
            "encoder.embed.weight is (",
        _deflate_bomb(trained_run / "best.pt", tmp_path / "bomb.pt"):
            "bomb.pt: its parts declare",
    }
    out, rss_mb = run_bounded(f"""
        from seq2seq.errors import Seq2SeqError
        from seq2seq.translator import Translator
        for path in {list(cases)!r}:
            try:
                Translator.load(path, device="cpu")
            except Seq2SeqError as err:
                print(err)
            else:
                print(path, "loaded")
    """)
    for line, (path, message) in zip(out.splitlines(), cases.items(), strict=True):
        assert line.startswith(path.rsplit("/", 1)[0]) and message in line, line
    assert "needed (2000000, 24)" in out
    assert rss_mb < 1024


@pytest.mark.parametrize("max_len", [-1, 0, "50", True, 2.5])
def test_a_checkpoint_s_max_len_must_be_a_positive_integer(trained_run, tmp_path, max_len):
    state = load_checkpoint(trained_run / "best.pt")
    path = _edited(state, tmp_path / "m.pt", max_len=max_len)
    with pytest.raises(CheckpointError, match=r"m.pt: max_len must be an integer >= 1, got "):
        Translator.load(path, device="cpu")
