import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from seq2seq.data import DataDir
from seq2seq.errors import ArgumentError, DataError
from seq2seq.prepare import prepare
from seq2seq.text import Tokenizer


def test_prepared_ids_are_the_tokenized_corpus(corpus, data_dir):
    data = DataDir(data_dir)
    train = data.split("train")
    src_lines = corpus["train_src"].read_text().splitlines()
    tgt_lines = corpus["train_tgt"].read_text().splitlines()
    assert len(train) == len(src_lines) == 1500
    tok_en, tok_fr = Tokenizer("moses", "en"), Tokenizer("moses", "fr")
    for i in (0, 7, 1499):
        assert data.src_vocab.decode(train.src[i]) == [
            w if w in data.src_vocab.index else "<unk>" for w in tok_en.tokenize(src_lines[i])]
        assert data.tgt_vocab.decode(train.tgt[i]) == [
            w if w in data.tgt_vocab.index else "<unk>" for w in tok_fr.tokenize(tgt_lines[i])]
    assert len(data.src_vocab) <= 2004 and len(data.tgt_vocab) == 2004
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["train"]["kept"] == 1500 and meta["valid"]["kept"] == 100


def test_vocabulary_keeps_the_most_frequent_words(data_dir):
    data = DataDir(data_dir)
    counts = np.bincount(np.asarray(data.split("train").tgt.ids), minlength=len(data.tgt_vocab))
    # Ids are assigned by decreasing frequency after the 4 specials.
    assert all(counts[4:-1] >= counts[5:])


def test_long_and_empty_pairs_are_dropped_and_counted(tmp_path):
    src = tmp_path / "a.en"
    tgt = tmp_path / "a.fr"
    src.write_text("one two\n" + "w " * 9 + "\nthree\n \n")
    tgt.write_text("un deux\ncourt\n" + "m " * 9 + "\nvide\n")
    meta = prepare(src, tgt, src, tgt, tmp_path / "d", max_len=5, tokenizer="space")
    assert meta["train"] == {"pairs": 4, "kept": 1, "too_long": 2, "empty": 1}


def test_prepare_reads_gzip_and_workers_give_identical_output(corpus, tmp_path):
    gz = {}
    for key in ("train_src", "train_tgt"):
        gz[key] = tmp_path / (corpus[key].name + ".gz")
        gz[key].write_bytes(gzip.compress(corpus[key].read_bytes()))
    args = (corpus["valid_src"], corpus["valid_tgt"])
    prepare(gz["train_src"], gz["train_tgt"], *args, tmp_path / "one")
    prepare(corpus["train_src"], corpus["train_tgt"], *args, tmp_path / "two", workers=2)
    for name in ("vocab.src", "vocab.tgt", "train.src.ids", "train.tgt.offsets",
                 "valid.tgt.ids"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_sentencepiece_tokenizer_roundtrip(corpus, tmp_path):
    prepare(corpus["train_src"], corpus["train_tgt"], corpus["valid_src"], corpus["valid_tgt"],
            tmp_path / "sp", src_vocab=300, tgt_vocab=300, tokenizer="sentencepiece")
    data = DataDir(tmp_path / "sp")
    tok = data.tokenizer("tgt")
    line = corpus["valid_tgt"].read_text().splitlines()[3]
    assert tok.detokenize(tok.tokenize(line)) == " ".join(line.split())
    assert len(data.tgt_vocab) <= 304


@pytest.mark.parametrize("problem", ["line_counts", "empty", "utf8"])
def test_bad_corpus_raises_and_writes_nothing(tmp_path, problem):
    src, tgt = tmp_path / "x.en", tmp_path / "x.fr"
    src.write_text("a b\nc d\n")
    tgt.write_text("e f\ng h\n")
    if problem == "line_counts":
        tgt.write_text("e f\n")
        match = "x.en has 2 lines but .*x.fr has 1"
    elif problem == "empty":
        src.write_text("")
        tgt.write_text("")
        match = "empty corpus"
    else:
        tgt.write_bytes(b"e f\ng \xff h\n")
        match = r"x.fr line 2: invalid UTF-8 \(byte 0xff at column 3\)"
    with pytest.raises(DataError, match=match):
        prepare(src, tgt, src, tgt, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.en", "x.fr"]


def test_existing_output_is_kept_without_force(corpus, data_dir):
    before = (data_dir / "meta.json").read_text()
    with pytest.raises(DataError, match="already exists"):
        prepare(corpus["train_src"], corpus["train_tgt"], corpus["valid_src"],
                corpus["valid_tgt"], data_dir)
    assert (data_dir / "meta.json").read_text() == before


def test_force_replaces_only_a_data_directory_that_holds_no_input(tmp_path, monkeypatch):
    (tmp_path / "x.en").write_text("a b\nc d\n")
    (tmp_path / "x.fr").write_text("e f\ng h\n")
    (tmp_path / "notes.txt").write_text("keep me")
    src, tgt = tmp_path / "x.en", tmp_path / "x.fr"

    def prep(out, src=src, tgt=tgt):
        prepare(src, tgt, src, tgt, out, tokenizer="space", force=True)

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="not a data directory"):
        prep(tmp_path)  # the folder of the corpora: `--out . --force`
    (tmp_path / "meta.json").write_text("{}")  # even if it looks like one
    with pytest.raises(DataError, match="current directory"):
        prep(Path("."))
    (tmp_path / "meta.json").unlink()
    with pytest.raises(DataError, match="not a data directory"):
        prep(tmp_path / "notes.txt")
    prep(tmp_path / "data")
    made = (tmp_path / "data" / "meta.json").read_text()
    (tmp_path / "data" / "raw.en").write_text("a b\nc d\n")  # the corpus inside the target
    with pytest.raises(DataError, match="holds the input"):
        prep(tmp_path / "data", src=tmp_path / "data" / "raw.en")
    assert (tmp_path / "data" / "raw.en").exists()
    (tmp_path / "data" / "raw.en").unlink()
    prep(tmp_path / "data")  # a data directory of ours is replaced
    assert (tmp_path / "data" / "meta.json").read_text() == made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes.txt", "x.en", "x.fr"]


def test_prepare_out_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "x.en").write_text("a b\n")
    with pytest.raises(DataError, match="cannot create the data directory"):
        prepare(tmp_path / "x.en", tmp_path / "x.en", tmp_path / "x.en", tmp_path / "x.en",
                tmp_path / "x.en" / "data", tokenizer="space")


def test_sentencepiece_vocab_smaller_than_the_alphabet(tmp_path):
    (tmp_path / "x.en").write_text("abcdefghij klmnop\nqrstuvwxyz\n" * 20)
    with pytest.raises(DataError, match="SentencePiece could not train a 5-piece vocabulary"):
        prepare(tmp_path / "x.en", tmp_path / "x.en", tmp_path / "x.en", tmp_path / "x.en",
                tmp_path / "out", tokenizer="sentencepiece", src_vocab=5, tgt_vocab=5)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, value", [("src_vocab", 0), ("tgt_vocab", -5), ("max_len", 0),
                                         ("workers", 0)])
def test_prepare_arguments_are_checked_with_one_message(corpus, tmp_path, capsys, name, value):
    from seq2seq.cli import main

    message = f"{name} must be an integer >= 1, got {value}"
    with pytest.raises(ArgumentError, match=message):
        prepare(corpus["train_src"], corpus["train_tgt"], corpus["valid_src"],
                corpus["valid_tgt"], tmp_path / "out", **{name: value})
    flag = f"--{name.replace('_', '-')}"
    code = main(["prepare", "--train-src", str(corpus["train_src"]), "--train-tgt",
                 str(corpus["train_tgt"]), "--valid-src", str(corpus["valid_src"]),
                 "--valid-tgt", str(corpus["valid_tgt"]), "--out", str(tmp_path / "out"),
                 flag, str(value)])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_force_deletes_nothing_that_prepare_did_not_make(tmp_path):
    (tmp_path / "x.en").write_text("a b\nc d\n")
    (tmp_path / "x.fr").write_text("e f\ng h\n")
    src, tgt, data = tmp_path / "x.en", tmp_path / "x.fr", tmp_path / "data"

    def prep():
        return prepare(src, tgt, src, tgt, data, tokenizer="space", force=True)

    prep()
    (data / "run1").mkdir()  # a run trained into the data directory
    (data / "run1" / "last.pt").write_bytes(b"weights")
    with pytest.raises(DataError, match="holds run1, which prepare did not make"):
        prep()
    (data / "run1" / "last.pt").unlink()
    (data / "run1").rmdir()
    (data / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="holds notes.txt, which prepare did not make"):
        prep()
    (data / "notes.txt").unlink()
    (data / "vocab.src").unlink()
    (data / "vocab.src").symlink_to(tmp_path / "x.en")  # a name of ours, but not our file
    with pytest.raises(DataError, match="holds vocab.src"):
        prep()
    assert (tmp_path / "x.en").read_text() == "a b\nc d\n"
    (data / "vocab.src").unlink()
    prep()  # only prepare's files: replaced, and nothing else left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "x.en", "x.fr"]


def test_force_through_a_symbolic_link_replaces_the_folder_it_points_to(tmp_path):
    (tmp_path / "x.en").write_text("a b\nc d\n")
    src, real, link = tmp_path / "x.en", tmp_path / "disk" / "data", tmp_path / "data"
    prepare(src, src, src, src, real, tokenizer="space")
    link.symlink_to(real, target_is_directory=True)
    (tmp_path / "y.en").write_text("x y z\n")
    prepare(tmp_path / "y.en", tmp_path / "y.en", src, src, link, tokenizer="space",
            force=True)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "vocab.src").read_text().split()[-3:] == ["x", "y", "z"]
    assert [p.name for p in real.parent.iterdir()] == ["data"]  # nothing left beside it
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="dangling: a symbolic link to .*nowhere"):
        prepare(src, src, src, src, tmp_path / "dangling", tokenizer="space", force=True)


def _prepare_from_a_fifo(tmp_path, out, *flags) -> tuple[subprocess.Popen, Path]:
    """`seq2seq prepare` in a child process whose training sources come through a FIFO:
    it waits, its temporary folder made, until the test writes the FIFO."""
    fifo = tmp_path / "train.en"
    os.mkfifo(fifo)
    (tmp_path / "train.fr").write_text("e f\ng h\n")
    (tmp_path / "valid.en").write_text("a b\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seq2seq", "prepare", "--train-src", fifo, "--train-tgt",
         tmp_path / "train.fr", "--valid-src", tmp_path / "valid.en", "--valid-tgt",
         tmp_path / "valid.en", "--out", out, "--tokenizer", "space", *flags],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60  # until it waits for the FIFO, its token spool open
    while not list(out.parent.glob(f".{out.name}.tmp-*/train.tok")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    return proc, fifo


@pytest.mark.parametrize("force", [False, True])
def test_an_out_made_while_prepare_runs_is_refused_not_replaced(tmp_path, force):
    out = tmp_path / "data"
    if force:  # a data directory of ours, to replace
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "x").write_text("a b\n")
        prepare(tmp_path / "old" / "x", tmp_path / "old" / "x", tmp_path / "old" / "x",
                tmp_path / "old" / "x", out, tokenizer="space")
    proc, fifo = _prepare_from_a_fifo(tmp_path, out, *(["--force"] if force else []))
    out.mkdir(exist_ok=True)  # another process makes the folder, or writes into it
    (out / "mine.txt").write_text("keep me")
    fifo.write_text("a b\nc d\n")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "appeared while prepare ran" in err or "holds mine.txt, which prepare did not" \
        " make" in err, err
    assert (out / "mine.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".data.tmp-*"))


def test_sigterm_removes_the_temporary_folder(tmp_path):
    proc, _ = _prepare_from_a_fifo(tmp_path, tmp_path / "data")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], err
