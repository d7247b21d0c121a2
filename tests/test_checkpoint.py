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
