import json

import numpy as np
import pytest

from seq2seq.analysis import (
    NbestEntry,
    bleu_by_bucket,
    bleu_by_length,
    equal_count_buckets,
    length_buckets,
    mean_frequency_rank,
    pca_2d,
    read_metrics,
    read_nbest,
    rescore,
)
from seq2seq.cli import main
from seq2seq.errors import DataError
from seq2seq.vocab import Vocabulary

REF = ["le chat dort", "le chien mange sa soupe", "il pleut", "nous partons demain matin tôt"]


def test_length_buckets_by_hand():
    assert length_buckets([1, 2, 6, 7, 11], width=5) == [(1, 6), (6, 11), (11, 16)]
    keys = [1, 2, 6, 7]
    hyps = [REF[0], REF[1], "x y", "a b c d"]  # bucket 1 right, bucket 2 all wrong
    buckets = bleu_by_bucket(keys, hyps, REF, [(1, 6), (6, 11)])
    assert [b.sentences for b in buckets] == [2, 2]
    assert buckets[0].bleu == pytest.approx(100) and buckets[1].bleu == pytest.approx(0)


def test_bleu_by_length_counts_moses_words_whatever_the_model_tokenizes():
    sources = ["Go!", "I like it.", "Where is the big red station?"]  # 2, 4, 7 words
    buckets = bleu_by_length(sources, REF[:3], REF[:3], width=3)
    assert [(b.low, b.high, b.sentences) for b in buckets] == [(1, 4, 1), (4, 7, 1),
                                                               (7, 10, 1)]
    fixed = bleu_by_length(sources, REF[:3], REF[:3], ranges=[(1, 5), (5, 50)])
    assert [b.sentences for b in fixed] == [2, 1]


def test_frequency_ranks_by_hand():
    vocab = Vocabulary(["<pad>", "<unk>", "<s>", "</s>", "the", "cat", "dog"])
    assert mean_frequency_rank(["the", "dog", "zebra"], vocab) == pytest.approx((1 + 3 + 4) / 3)
    assert mean_frequency_rank(["cat"], vocab) == 2


def test_equal_count_buckets_split_evenly():
    ranges = equal_count_buckets(list(range(1, 9)), count=4)
    counts = [sum(lo <= v < hi for v in range(1, 9)) for lo, hi in ranges]
    assert counts == [2, 2, 2, 2]


def test_pca_finds_the_direction_of_largest_variance():
    vectors = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0]])
    points = pca_2d(vectors)
    assert np.abs(points[2:, 0]) == pytest.approx([2, 2])
    assert np.abs(points[:2, 1]) == pytest.approx([1, 1])
    with pytest.raises(DataError):
        pca_2d(vectors[:1])


def test_rescoring_by_hand(translator):
    sources = ["Tom is here.", "I like cats."]
    best = [t.text for t in translator.translate(sources, beam=4)]
    # The list puts garbage first; the model prefers its own beam-search output.
    entries = [NbestEntry(0, "chat chat chat chat chat", -1.0), NbestEntry(0, best[0], -5.0),
               NbestEntry(1, best[1], -9.0), NbestEntry(1, "le le le le le le le", -2.0)]
    model_only = rescore(list(entries), sources, translator, weight=1.0)
    assert [e.text for e in model_only] == [best[0], entries[0].text, best[1], entries[3].text]
    list_only = rescore(list(entries), sources, translator, weight=0.0)
    assert [e.text for e in list_only] == [entries[0].text, best[0], entries[3].text, best[1]]
    for e in rescore(list(entries), sources, translator, weight=0.5):
        assert e.combined == pytest.approx(0.5 * e.model_score + 0.5 * e.score)


def test_read_nbest_format(tmp_path):
    path = tmp_path / "n.txt"
    path.write_text("0 ||| le chat ||| -1.5\n0 ||| un chat ||| f=1 2 ||| -2.0\n")
    assert [(e.source, e.text, e.score) for e in read_nbest(path)] == [
        (0, "le chat", -1.5), (0, "un chat", -2.0)]
    path.write_text("0 ||| le chat\n")
    with pytest.raises(DataError, match="n.txt line 1"):
        read_nbest(path)


def test_plot_commands_write_readable_files(capsys, tmp_path, trained_run, corpus):
    model = str(trained_run / "best.pt")
    src, ref = str(corpus["valid_src"]), str(corpus["valid_tgt"])
    for kind in ("length", "rarity"):
        code = main(["plot", kind, "--model", model, "--src", src, "--ref", ref, "--beam", "1",
                     "--out", str(tmp_path / kind)])
        assert code == 0
        assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{kind}.svg").exists()
        data = json.loads((tmp_path / f"{kind}.json").read_text())
        assert sum(b["sentences"] for b in data["buckets"]) == 100
    code = main(["plot", "pca", "--model", model, "--phrases", "examples/phrases.en",
                 "--out", str(tmp_path / "pca")])
    assert code == 0 and (tmp_path / "pca.png").stat().st_size > 10_000
    capsys.readouterr()
    code = main(["evaluate", "--model", model, "--src", src, "--ref", ref, "--beam", "1",
                 "--by-length"])
    assert code == 0 and "src words | sentences |  BLEU" in capsys.readouterr().out
    main(["evaluate", "--model", model, "--src", src, "--ref", ref, "--beam", "1",
          "--by-length", "--json"])
    by_length = json.loads(capsys.readouterr().out)["by_length"]["buckets"]
    plotted = json.loads((tmp_path / "length.json").read_text())["buckets"]
    assert by_length == plotted  # one length measure and one bucketing for both verbs


def test_plot_curves_draws_runs_and_reports_their_validation(capsys, tmp_path, trained_run):
    import matplotlib

    backend = matplotlib.get_backend()
    other = tmp_path / "other"
    other.mkdir()
    lines = [{"step": 10, "loss": 5.0, "ppl": 148.4, "elapsed_s": 3.0},
             {"step": 20, "valid_ppl": 90.0, "elapsed_s": 6.5},
             {"step": 40, "valid_ppl": 70.0, "elapsed_s": 12.0}]
    (other / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    code = main(["plot", "curves", str(trained_run), str(other), "--out", str(tmp_path / "c")])
    assert code == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "c.svg").exists()
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.strip().startswith("other"))
    assert [c.strip() for c in row.split("|")][:4] == ["other", "40", "70.00", "70.00"]
    # The trained run's own records: every validation line carries the wall time so far.
    records = read_metrics(trained_run)
    valid = [r for r in records if "valid_ppl" in r]
    assert [r["step"] for r in valid] == [60, 120]
    assert 0 < valid[0]["elapsed_s"] < valid[1]["elapsed_s"]
    assert matplotlib.get_backend() == backend  # plotting left pyplot's backend alone


def test_plot_curves_errors_name_the_run(capsys, tmp_path):
    assert main(["plot", "curves", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert f"{tmp_path}/metrics.jsonl: not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    assert main(["plot", "curves", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "metrics.jsonl line 2: not JSON" in capsys.readouterr().err
    assert main(["plot", "curves", "--out", str(tmp_path / "c")]) == 2
    assert "needs at least one RUN_DIR" in capsys.readouterr().err
    assert main(["plot", "length", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "takes no RUN_DIR" in capsys.readouterr().err
