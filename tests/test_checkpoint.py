import subprocess

import pytest
import torch

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.errors import CheckpointError
from seq2seq.translator import Translator


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


def test_garbage_sentencepiece_model_in_a_checkpoint(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    state["tokenizer"]["src"] = {"kind": "sentencepiece", "lang": "en", "lowercase": False,
                                 "sp_model": b"not a model"}
    save_checkpoint(state, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="crafted.pt: its tokenizer settings are damaged"):
        Translator.load(tmp_path / "crafted.pt", device="cpu")
