from collections import Counter

import pytest

from seq2seq.errors import DataError
from seq2seq.text import Tokenizer, normalize, read_lines, read_pairs
from seq2seq.vocab import EOS_ID, UNK_ID, Vocabulary


def test_normalize_folds_french_typographic_spaces():
    raw = "Vraiment\u202f? «\u00a0Oui\u00a0»\u200b  non\u00ad"
    assert normalize(raw) == "Vraiment ? « Oui » non"


def test_moses_roundtrip_and_lowercase():
    tok = Tokenizer("moses", "fr")
    tokens = tok.tokenize("C'est l'heure, dit-il\u202f!")
    assert tokens == ["C'", "est", "l'", "heure", ",", "dit-il", "!"]
    assert tok.detokenize(tokens) == "C'est l'heure, dit-il !"
    assert Tokenizer("moses", "en", lowercase=True).tokenize("Tom's HERE.") == [
        "tom", "'s", "here", "."]


def test_space_tokenizer():
    tok = Tokenizer("space")
    assert tok.tokenize("  a  b\tc ") == ["a", "b", "c"]
    assert tok.detokenize(["a", "b"]) == "a b"
    assert tok.tokenize("") == []


def test_unknown_tokenizer():
    with pytest.raises(DataError, match="unknown tokenizer"):
        Tokenizer("bpe")


def test_read_pairs_checks_line_counts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1\n2\n3\n")
    b.write_text("1\n2\n3\n4\n")
    with pytest.raises(DataError, match="has 3 lines but .* has 4"):
        list(read_pairs(a, b))


def test_read_lines_names_file_and_line_of_bad_utf8(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("ok\nstill ok\n\u00e9t\u00e9 \xe9\n".encode("utf-8")[:-3] + b"\xe9\n")
    with pytest.raises(DataError, match="bad.txt line 3: invalid UTF-8"):
        list(read_lines(p))


def test_vocabulary_ranks_by_count_then_alphabet(tmp_path):
    vocab = Vocabulary.build(Counter({"b": 3, "a": 3, "c": 5, "d": 1}), max_words=3)
    assert vocab.words[4:] == ["c", "a", "b"]
    assert vocab.encode(["a", "d"]) == [5, UNK_ID]
    assert vocab.decode([4, 5, EOS_ID, 6]) == ["c", "a"]
    vocab.save(tmp_path / "v")
    assert Vocabulary.load(tmp_path / "v") == vocab


def test_damaged_gzip_is_reported(tmp_path):
    import gzip

    p = tmp_path / "c.en.gz"
    text = "".join(f"{i * 7919 % 100003} {i}\n" for i in range(20000)).encode()
    p.write_bytes(gzip.compress(text)[:2000])
    with pytest.raises(DataError, match="c.en.gz: unreadable after line"):
        list(read_lines(p))
