"""The command line: each bad input gives a one-line error and a non-zero exit."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seq2seq.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def prepare_args(src, tgt, out):
    return ["prepare", "--train-src", src, "--train-tgt", tgt, "--valid-src", src,
            "--valid-tgt", tgt, "--out", out]


def test_prepare_mismatched_line_counts(capsys, tmp_path):
    (tmp_path / "a.en").write_text("a\nb\n")
    (tmp_path / "a.fr").write_text("a\n")
    code, _, err = run(capsys, *prepare_args(tmp_path / "a.en", tmp_path / "a.fr", tmp_path / "d"))
    one_line_error(code, err, "a.en has 2 lines", "a.fr has 1")
    assert not (tmp_path / "d").exists()


def test_prepare_empty_corpus(capsys, tmp_path):
    (tmp_path / "a.en").write_text("")
    (tmp_path / "a.fr").write_text("")
    code, _, err = run(capsys, *prepare_args(tmp_path / "a.en", tmp_path / "a.fr", tmp_path / "d"))
    one_line_error(code, err, "empty corpus")


def test_prepare_invalid_utf8(capsys, tmp_path):
    (tmp_path / "a.en").write_text("a\nb\nc\n")
    (tmp_path / "a.fr").write_bytes(b"a\nb\n\xc3\x28\n")
    code, _, err = run(capsys, *prepare_args(tmp_path / "a.en", tmp_path / "a.fr", tmp_path / "d"))
    one_line_error(code, err, "a.fr line 3: invalid UTF-8")


@pytest.mark.parametrize("config, fragment", [
    ("model: {layers: 4}", "unknown key model.layers"),
    ("optim: {lr: '0.7x'}", "optim.lr must be float"),
    ("batching: {batch_size: many}", "batching.batch_size must be int"),
])
def test_train_bad_config(capsys, tmp_path, data_dir, config, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config)
    code, _, err = run(capsys, "train", cfg, "--data", data_dir, "--out", tmp_path / "r")
    one_line_error(code, err, fragment)
    assert not (tmp_path / "r").exists()


def test_train_bad_override(capsys, tmp_path, data_dir):
    code, _, err = run(capsys, "train", "configs/tatoeba-cpu.yaml", "optim.lr=fast", "--data",
                       data_dir, "--out", tmp_path / "r")
    one_line_error(code, err, "optim.lr must be float")


def test_train_dry_run_counts_the_paper_model(capsys):
    code, out, _ = run(capsys, "train", "configs/sutskever2014.yaml", "--dry-run")
    assert code == 0
    assert "384,144,000" in out and "(384.1M)" in out
    assert "recurrent" in out and "64,064,000" in out


def test_train_dry_run_of_a_huge_model_is_an_error_or_a_count_with_nothing_built(capsys):
    code, _, err = run(capsys, "train", "configs/sutskever2014.yaml", "--dry-run",
                       "model.hidden_size=1000000000")
    one_line_error(code, err, "model.hidden_size must be an integer in 1..16384, got 1000000000")
    code, out, _ = run(capsys, "train", "configs/sutskever2014.yaml", "--dry-run",
                       "model.hidden_size=16384", "model.num_layers=64")  # 1 TB if built
    assert code == 0 and "(274429.1M)" in out


@pytest.mark.parametrize("damage", ["truncated", "foreign", "missing"])
def test_translate_bad_checkpoint(capsys, tmp_path, trained_run, damage):
    path = tmp_path / "model.pt"
    if damage == "truncated":
        path.write_bytes((trained_run / "best.pt").read_bytes()[:3000])
    elif damage == "foreign":
        import torch

        torch.save({"state_dict": {}}, path)
    code, _, err = run(capsys, "translate", "--model", path, "--input", trained_run / "x")
    fragment = {"truncated": "truncated or corrupt", "foreign": "not a seq2seq checkpoint",
                "missing": "checkpoint not found"}[damage]
    one_line_error(code, err, "model.pt", fragment)


def test_translate_keeps_empty_lines_in_place_and_truncates_long_ones(capsys, tmp_path,
                                                                      trained_run):
    src = tmp_path / "in.en"
    src.write_text("Tom is here.\n\nI like cats.\n   \n" + "very " * 300 + "long.\n")
    code, out, err = run(capsys, "translate", "--model", trained_run / "best.pt", "--input",
                         src, "--beam", 2)
    assert code == 0
    lines = out.split("\n")
    assert len(lines) == 6 and lines[5] == ""
    assert lines[1] == "" and lines[3] == ""
    assert lines[0] and lines[2]
    assert "input line 5: 302 tokens, truncated to the model's limit of 200" in err


def test_translate_nbest_format(capsys, tmp_path, trained_run):
    src = tmp_path / "in.en"
    src.write_text("Tom is here.\nI like cats.\n")
    code, out, _ = run(capsys, "translate", "--model", trained_run / "best.pt", "--input", src,
                       "--beam", 3, "--nbest", 3)
    assert code == 0
    rows = [line.split(" ||| ") for line in out.splitlines()]
    assert [r[0] for r in rows] == ["0"] * 3 + ["1"] * 3
    scores = [float(r[2]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("alpha", ["-1", "nan", "inf"])
def test_translate_bad_length_penalty(capsys, tmp_path, trained_run, alpha):
    out = tmp_path / "out.fr"
    code, _, err = run(capsys, "translate", "--model", trained_run / "best.pt",
                       "--length-penalty", alpha, "--output", out)
    one_line_error(code, err, "length_penalty must be a finite number in [0, 10]", alpha)
    assert not out.exists()


def test_translate_reads_stdin(trained_run):
    proc = subprocess.run(
        [sys.executable, "-m", "seq2seq", "translate", "--model", str(trained_run / "best.pt"),
         "--beam", "1"], input=b"Tom is here.\n\xff\n", capture_output=True)
    assert proc.returncode == 2
    assert b"<stdin> line 2: invalid UTF-8" in proc.stderr


def test_translate_reads_an_endless_stdin_line_in_bounded_memory(trained_run):
    import resource

    from seq2seq.text import MAX_LINE_BYTES

    def limit_memory():  # so that a regression fails here instead of filling the machine
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    with open("/dev/zero", "rb") as zero:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seq2seq", "translate", "--model",
             str(trained_run / "best.pt"), "--beam", "1"], stdin=zero,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit_memory,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    one_line_error(proc.returncode, err, f"<stdin> line 1: longer than {MAX_LINE_BYTES:,} bytes")
    assert usage.ru_maxrss < 1 << 20  # KiB: under 1 GB


def _write_fifo(fifo, data: bytes, reader: subprocess.Popen) -> None:
    """Write `data` into `fifo` once `reader` opens it; fail if `reader` ends first."""
    deadline = time.time() + 120
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while there is no reader
            break
        except OSError:
            assert reader.poll() is None and time.time() < deadline, reader.stderr.read()
            time.sleep(0.02)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["fifo", "/dev/stdin"])
def test_translate_input_may_be_a_pipe(tmp_path, trained_run, how):
    command = [sys.executable, "-m", "seq2seq", "translate", "--model",
               str(trained_run / "best.pt"), "--beam", "1", "--input"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if how == "/dev/stdin":
        proc = subprocess.run([*command, "/dev/stdin"], input=b"Tom is here.\nI like cats.\n",
                              capture_output=True, env=env, timeout=120)
    else:
        fifo = tmp_path / "in.en"
        os.mkfifo(fifo)
        child = subprocess.Popen([*command, str(fifo)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env)
        _write_fifo(fifo, b"Tom is here.\nI like cats.\n", child)
        out, err = child.communicate(timeout=120)
        proc = subprocess.CompletedProcess(command, child.returncode, out, err)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2 and all(proc.stdout.splitlines())


@pytest.mark.parametrize("case", ["evaluate --hyps = --ref", "evaluate --hyps = --src, linked",
                                  "translate --output = --model", "plot --out.json = --hyps"])
def test_an_output_that_is_an_input_is_refused(capsys, tmp_path, corpus, trained_run, case):
    src, ref = tmp_path / "test.en", tmp_path / "test.fr"
    src.write_bytes(corpus["valid_src"].read_bytes())
    ref.write_bytes(corpus["valid_tgt"].read_bytes())
    model = tmp_path / "model.pt"
    model.write_bytes((trained_run / "best.pt").read_bytes())
    before = {p: p.read_bytes() for p in (src, ref, model)}
    evaluate = ["evaluate", "--model", model, "--src", src, "--ref", ref, "--beam", 1]
    if case == "evaluate --hyps = --ref":
        argv, message = [*evaluate, "--hyps", ref], f"--hyps {ref} is the same file as --ref"
    elif case == "evaluate --hyps = --src, linked":
        os.link(src, tmp_path / "hyps.txt")  # the same file under another name
        argv = [*evaluate, "--hyps", tmp_path / "hyps.txt"]
        message = "is the same file as --src"
    elif case == "translate --output = --model":
        argv = ["translate", "--model", model, "--input", src, "--output", model]
        message = "is the same file as --model"
    else:
        hyps = tmp_path / "h.json"
        hyps.write_bytes(ref.read_bytes())
        before[hyps] = hyps.read_bytes()
        argv = ["plot", "length", "--model", model, "--src", src, "--ref", ref, "--hyps",
                hyps, "--out", tmp_path / "h"]
        message = f"--out {hyps} is the same file as --hyps"
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, message, "would destroy an input")
    assert {p: p.read_bytes() for p in before} == before


def test_plot_out_under_a_file_names_the_file(capsys, tmp_path, trained_run, corpus):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run(capsys, "plot", "length", "--model", trained_run / "best.pt", "--src",
                       corpus["valid_src"], "--ref", corpus["valid_tgt"], "--beam", 1,
                       "--out", tmp_path / "file" / "p")
    one_line_error(code, err, f"{tmp_path / 'file'}: exists and is not a folder")


def test_evaluate_json(capsys, corpus, trained_run):
    code, out, _ = run(capsys, "evaluate", "--model", trained_run / "best.pt", "--src",
                       corpus["valid_src"], "--ref", corpus["valid_tgt"], "--beam", 2, "--json")
    assert code == 0
    metrics = json.loads(out)
    assert metrics["sentences"] == 100 and metrics["beam"] == 2
    assert metrics["length_penalty"] == 0.0
    assert 0 <= metrics["bleu"] <= 100 and metrics["ppl"] > 1


def test_score_prints_one_log_probability_per_pair(capsys, corpus, trained_run):
    code, out, _ = run(capsys, "score", "--model", trained_run / "best.pt", "--src",
                       corpus["valid_src"], "--tgt", corpus["valid_tgt"])
    assert code == 0
    scores = [float(x) for x in out.split()]
    assert len(scores) == 100 and all(s < 0 for s in scores)


def test_train_on_a_missing_gpu_is_a_clear_error(capsys, tmp_path, data_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run(capsys, "train", "configs/tatoeba-cpu.yaml", "--data", data_dir,
                       "--out", tmp_path / "r", "--device", "cuda")
    one_line_error(code, err, "device cuda was asked for, but no CUDA GPU is available")


def test_translate_output_may_be_its_input_and_is_replaced_only_at_the_end(capsys, tmp_path,
                                                                           trained_run):
    model = trained_run / "best.pt"
    same = tmp_path / "same.txt"
    same.write_text("Tom is here.\nI like cats.\n")
    code, _, _ = run(capsys, "translate", "--model", model, "--input", same, "--output", same,
                     "--beam", 2)
    assert code == 0
    translated = same.read_text().splitlines()
    assert len(translated) == 2 and all(translated)
    (tmp_path / "in.en").write_text("Tom is here.\nI like cats.\n")
    code, out, _ = run(capsys, "translate", "--model", model, "--input", tmp_path / "in.en",
                       "--beam", 2)
    assert out.splitlines() == translated
    # A run that fails on its input leaves an existing output as it was, and no temp file.
    (tmp_path / "bad.en").write_bytes(b"Tom is here.\n\xff\xfe\n")
    code, _, err = run(capsys, "translate", "--model", model, "--input", tmp_path / "bad.en",
                       "--output", same)
    one_line_error(code, err, "bad.en line 2: invalid UTF-8")
    assert same.read_text().splitlines() == translated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.en", "in.en", "same.txt"]


def test_translate_output_never_follows_a_planted_symbolic_link(capsys, tmp_path, trained_run):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "in.en").write_text("Tom is here.\n")
    # A link at the name the temporary file used to have (.NAME.tmp-PID), and one at the
    # output itself: the write must go to neither's target.
    (tmp_path / f".res.txt.tmp-{os.getpid()}").symlink_to(victim)
    (tmp_path / "linked.txt").symlink_to(victim)
    for out in ("res.txt", "linked.txt"):
        code, _, err = run(capsys, "translate", "--model", trained_run / "best.pt", "--input",
                           tmp_path / "in.en", "--output", tmp_path / out, "--beam", 1)
        assert code == 0, err
        assert not (tmp_path / out).is_symlink() and (tmp_path / out).read_text().strip()
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".res.txt.tmp-{os.getpid()}", "in.en", "linked.txt", "res.txt", "victim"]


def test_sigterm_during_translate_leaves_no_temporary_file(tmp_path, trained_run):
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seq2seq", "translate", "--model", trained_run / "best.pt",
         "--output", out], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdin.write(b"Tom is here.\n")  # and the input stays open: translate waits
    proc.stdin.flush()
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.txt.tmp-*")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    assert out.read_text() == "old\n"


@pytest.mark.parametrize("where, message", [("missing/out.fr", "does not exist"),
                                            (".", "is a directory")])
def test_translate_output_into_a_missing_folder_or_a_folder(capsys, tmp_path, trained_run,
                                                            where, message):
    (tmp_path / "in.en").write_text("Tom is here.\n")
    code, _, err = run(capsys, "translate", "--model", trained_run / "best.pt", "--input",
                       tmp_path / "in.en", "--output", tmp_path / where)
    one_line_error(code, err, message)


@pytest.mark.parametrize("flag, value, api, message", [
    ("--port", "99999", None, "port must be an integer in 1..65535 (--port), got 99999"),
    ("--header-timeout", "0", ("Guard", "header_timeout_s", 0.0),
     "header_timeout_s must be a finite number > 0 (--header-timeout), got 0.0"),
    ("--body-timeout", "nan", ("Guard", "body_timeout_s", float("nan")),
     "body_timeout_s must be a finite number > 0 (--body-timeout), got nan"),
    ("--body-timeout", "-1", ("Guard", "body_timeout_s", -1.0),
     "body_timeout_s must be a finite number > 0 (--body-timeout), got -1.0"),
    ("--max-queue", "0", ("Guard", "max_queued_sentences", 0),
     "max_queued_sentences must be an integer >= 1 (--max-queue), got 0"),
    ("--max-connections", "-3", ("Guard", "max_connections", -3),
     "max_connections must be an integer >= 1 (--max-connections), got -3"),
    ("--max-cost", "0", ("Guard", "max_cost", 0),
     "max_cost must be an integer >= 1 (--max-cost), got 0"),
    ("--max-sentences", "0", ("Limits", "max_sentences", 0),
     "max_sentences must be an integer >= 1 (--max-sentences), got 0"),
    ("--max-beam", "300", ("Limits", "max_beam", 300),
     "max_beam must be an integer in 1..256 (--max-beam), got 300"),
    ("--batch-wait-ms", "-1", ("Batching", "wait_ms", -1.0),
     "wait_ms must be a finite number >= 0 (--batch-wait-ms), got -1.0"),
    ("--max-batch-sentences", "0", ("Batching", "max_sentences", 0),
     "max_sentences must be an integer >= 1 (--max-batch-sentences), got 0"),
])
def test_serve_options_are_checked_by_the_library_with_its_words(capsys, trained_run, flag,
                                                                  value, api, message):
    import seq2seq.serve as serve
    from seq2seq.errors import ArgumentError

    code, _, err = run(capsys, "serve", "--model", trained_run / "best.pt", flag, value)
    one_line_error(code, err, message)
    if api:
        cls, field, bad = api
        with pytest.raises(ArgumentError) as raised:
            getattr(serve, cls)(**{field: bad})
        assert str(raised.value) == message


def test_every_server_limit_is_a_serve_option_with_its_default_range_and_readme_row(
        capsys, monkeypatch):
    from seq2seq.cli import build_parser, limits_from
    from seq2seq.serve.limits import SETTINGS, allowed_range, shown_default

    monkeypatch.setenv("COLUMNS", "10000")  # no words cut at hyphens
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    # an option's help follows it, on its line or (a long option) on the next
    section = next(part for part in capsys.readouterr().out.split("\n\n")
                   if part.startswith("options:"))
    options = {chunk.split()[0]: " ".join(chunk.split()) for chunk in section.split("\n  -")[1:]}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {cells[0].strip("`"): cells[1:3] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in readme.splitlines()
             if line.startswith("| `--"))}
    args = build_parser().parse_args(["serve", "--model", "m.pt"])
    flags = set()
    for settings in SETTINGS:
        for f in dataclasses.fields(settings):
            flag, bounds = f.metadata["flag"], allowed_range(f)
            flags.add(flag)
            assert options[flag[1:]].endswith(
                f"(default {shown_default(f)}{'; ' if bounds else ''}{bounds})"), flag
            assert rows[flag] == [shown_default(f), bounds], flag
        assert limits_from(args, settings) == settings()  # the options' defaults are its own
    assert set(rows) == flags


def test_train_prints_its_progress_and_validation(capsys, tmp_path, data_dir):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {embed_dim: 16, hidden_size: 16, num_layers: 1}\n"
                   "optim: {max_steps: 4}\ntrain: {log_every: 2, valid_every: 4, threads: 1}\n")
    code, out, err = run(capsys, "train", cfg, "--data", data_dir, "--out", tmp_path / "run")
    assert code == 0 and json.loads(out)["step"] == 4
    assert err.count("src+tgt tok/s") == 2 and "step 4 | epoch" in err and "valid ppl" in err
    assert "warning:" not in err


@pytest.mark.parametrize("verb", ["train", "prepare", "plot"])
def test_an_output_folder_that_cannot_be_made_is_a_one_line_error(capsys, tmp_path, data_dir,
                                                                   trained_run, corpus, verb):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    argv = {
        "train": ["train", "configs/tatoeba-cpu.yaml", "--data", data_dir, "--out", out,
                  "optim.max_steps=1", "train.precision=fp32"],
        "prepare": ["prepare", "--train-src", corpus["train_src"], "--train-tgt",
                    corpus["train_tgt"], "--valid-src", corpus["valid_src"], "--valid-tgt",
                    corpus["valid_tgt"], "--out", out],
        "plot": ["plot", "length", "--model", trained_run / "best.pt", "--src",
                 corpus["valid_src"], "--ref", corpus["valid_tgt"], "--beam", "1", "--out",
                 out / "length"],
    }[verb]
    code, _, err = run(capsys, *argv)
    assert code != 0 and len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert str(blocker) in err and "Traceback" not in err


def test_plot_bucket_sizes_are_checked(capsys, trained_run, corpus, tmp_path):
    code, _, err = run(capsys, "plot", "length", "--model", trained_run / "best.pt", "--src",
                       corpus["valid_src"], "--ref", corpus["valid_tgt"], "--beam", "1",
                       "--width", "0", "--out", tmp_path / "x")
    one_line_error(code, err, "width must be an integer >= 1, got 0")


def test_plot_rarity_by_training_words_needs_a_readable_file(capsys, trained_run, corpus,
                                                             tmp_path):
    argv = ["plot", "rarity", "--model", trained_run / "best.pt", "--src", corpus["valid_src"],
            "--ref", corpus["valid_tgt"], "--beam", "1", "--out", tmp_path / "x"]
    code, _, err = run(capsys, *argv, "--measure", "train-words")
    one_line_error(code, err, "--measure train-words and --train-src FILE go together")
    code, _, err = run(capsys, *argv, "--train-src", corpus["train_src"])
    one_line_error(code, err, "--measure train-words and --train-src FILE go together")
    code, _, err = run(capsys, *argv, "--measure", "train-words", "--train-src",
                       tmp_path / "missing.en.gz")
    one_line_error(code, err, "missing.en.gz: file not found")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("verb", ["translate", "score", "evaluate", "rescore", "plot", "serve"])
def test_every_decoding_verb_loads_the_precision_asked_for(capsys, monkeypatch, tmp_path,
                                                           corpus, trained_run, verb,
                                                           precision):
    import uvicorn

    from seq2seq.device import cpu_has_bf16
    from seq2seq.translator import Translator

    loaded = []
    load = Translator.load.__func__

    def spy(cls, *args, **kwargs):
        loaded.append(load(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(Translator, "load", classmethod(spy))
    served = []  # serve: load the model, build the app, don't listen
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(self.config.app))
    src = tmp_path / "src.en"
    src.write_text("".join(corpus["valid_src"].read_text().splitlines(True)[:5]))
    nbest = tmp_path / "nbest"
    nbest.write_text("0 ||| le chat ||| -1.0\n1 ||| il ||| -2.0\n")
    model = ["--model", trained_run / "best.pt", "--precision", precision]
    argv = {
        "translate": ["translate", *model, "--input", src, "--beam", 2],
        "score": ["score", *model, "--src", src, "--tgt", src],
        "evaluate": ["evaluate", *model, "--src", src, "--ref", src, "--beam", 2, "--json"],
        "rescore": ["rescore", *model, "--src", src, "--nbest", nbest],
        "plot": ["plot", "length", *model, "--src", src, "--ref", src, "--out",
                 tmp_path / "fig"],
        "serve": ["serve", *model, "--port", 8123],
    }[verb]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    expect = "fp32" if precision == "bf16" and not cpu_has_bf16() else precision
    assert [t.precision for t in loaded] == [expect]
    output_layer = type(loaded[0].ensemble.models[0].decoder.output).__module__
    assert output_layer.startswith("torch.ao.nn.quantized") == (precision == "int8")
    sources = src.read_text().splitlines()
    if verb == "translate":  # what the CLI printed is what that precision translates
        assert out.splitlines() == [t.text for t in loaded[0].translate(sources, beam=2)]
    if verb == "score":
        scores = [float(x) for x in out.split()]
        assert scores == pytest.approx(loaded[0].score(sources, sources), abs=1e-3)
    if verb == "serve":  # and says so
        from fastapi.testclient import TestClient

        with TestClient(served[0], base_url="http://localhost") as client:
            assert client.get("/health").json()["precision"] == expect


def test_int8_for_training_is_a_one_line_error(capsys, tmp_path, data_dir):
    code, _, err = run(capsys, "train", "configs/tatoeba-cpu.yaml", "--data", data_dir,
                       "--out", tmp_path / "run", "train.precision=int8")
    one_line_error(code, err, "train.precision", "int8")


@pytest.mark.parametrize("verb", ["translate", "score", "evaluate", "rescore", "prepare"])
def test_progress_goes_to_stderr_only(capsys, tmp_path, corpus, trained_run, verb):
    src = tmp_path / "src.en"
    src.write_text("".join(corpus["valid_src"].read_text().splitlines(True)[:5]))
    nbest = tmp_path / "nbest"
    nbest.write_text("0 ||| le chat ||| -1.0\n1 ||| il ||| -2.0\n")
    model = ["--model", trained_run / "best.pt"]
    argv, unit = {
        "translate": (["translate", *model, "--input", src, "--beam", 2], "sentences"),
        "score": (["score", *model, "--src", src, "--tgt", src], "pairs"),
        "evaluate": (["evaluate", *model, "--src", src, "--ref", src, "--json"], "sentences"),
        "rescore": (["rescore", *model, "--src", src, "--nbest", nbest], "hypotheses"),
        "prepare": (prepare_args(src, src, tmp_path / "data") + ["--force"], "pairs"),
    }[verb]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text("{}")  # an earlier data dir, replaced
    outputs = {}
    for flag in ("--progress", "--no-progress", None):
        code, out, err = run(capsys, *argv, *([flag] if flag else []))
        assert code == 0, err
        if verb == "evaluate":  # its timings differ from run to run
            out = {k: v for k, v in json.loads(out).items() if "second" not in k}
        outputs[flag] = out
        assert (f"{unit}/s]" in err) == (flag == "--progress"), err
    assert outputs["--progress"] == outputs["--no-progress"] == outputs[None]


def test_average_writes_a_checkpoint_translate_loads_and_refuses_other_models(
        capsys, tmp_path, trained_run):
    import torch

    from seq2seq.checkpoint import load_checkpoint, save_checkpoint

    best, last = trained_run / "best.pt", trained_run / "last.pt"
    code, out, err = run(capsys, "average", "--model", best, "--model", last, "--out",
                         tmp_path / "mean.pt")
    assert code == 0 and "mean.pt: the mean of" in out, err
    code, out, _ = run(capsys, "translate", "--model", tmp_path / "mean.pt", "--beam", 1,
                       "--input", trained_run / "config.yaml")
    assert code == 0 and out
    state = load_checkpoint(best)
    state["src_vocab"] = state["src_vocab"][::-1]
    save_checkpoint(state, tmp_path / "other.pt")
    code, _, err = run(capsys, "average", "--model", best, "--model", tmp_path / "other.pt",
                       "--out", tmp_path / "bad.pt")
    one_line_error(code, err, "other.pt: its src vocab differs from", "best.pt's")
    assert not (tmp_path / "bad.pt").exists()
    code, _, err = run(capsys, "average", "--last", 2, trained_run, "--out", tmp_path / "x.pt")
    one_line_error(code, err, "0 numbered checkpoints (step-N.pt), fewer than 2",
                   "train.keep_last")
    code, _, err = run(capsys, "average", "--last", "two", trained_run, "--out", tmp_path / "x")
    one_line_error(code, err, "N must be an integer >= 1 (--last N RUN_DIR), got 'two'")
    code, _, err = run(capsys, "average", "--last", 0, trained_run, "--out", tmp_path / "x")
    one_line_error(code, err, "N must be an integer >= 1 (--last N RUN_DIR), got 0")
    code, _, err = run(capsys, "average", "--model", best, "--out", tmp_path / "x.pt")
    one_line_error(code, err, "average needs two checkpoints or more")
    before = best.read_bytes()
    code, _, err = run(capsys, "average", "--model", best, "--model", last, "--out", best)
    one_line_error(code, err, f"--out {best} is the same file as --model {best}")
    assert best.read_bytes() == before
    assert torch.is_tensor(load_checkpoint(tmp_path / "mean.pt")["model"]["encoder.embed.weight"])


@pytest.fixture(scope="module")
def shortlist_file(data_dir, tmp_path_factory) -> Path:
    """A small shortlist of the tiny model's data: 3 translations per source word, 30
    frequent words."""
    out = tmp_path_factory.mktemp("shortlist") / "shortlist.pt"
    assert main(["shortlist", "--data", str(data_dir), "--out", str(out), "--translations",
                 "3", "--frequent", "30", "--iterations", "2"]) == 0
    return out


def test_shortlist_writes_what_it_was_asked_for(capsys, tmp_path, data_dir):
    from seq2seq.shortlist import build_shortlist

    out = tmp_path / "s.pt"
    code, printed, _ = run(capsys, "shortlist", "--data", data_dir, "--out", out,
                           "--translations", 2, "--frequent", 7, "--iterations", 1)
    assert code == 0 and printed.startswith(f"{out}: 2 translations of each of")
    expected = build_shortlist(data_dir, translations=2, frequent=7, iterations=1)
    state = torch_load(out)
    assert state["table"].equal(expected.table) and state["frequent"].equal(expected.frequent)


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("args, message", [
    (["--translations", "0"], "translations must be an integer >= 1, got 0"),
    (["--iterations", "0"], "iterations must be an integer >= 1, got 0"),
])
def test_shortlist_bad_arguments(capsys, tmp_path, data_dir, args, message):
    code, _, err = run(capsys, "shortlist", "--data", data_dir, "--out", tmp_path / "s.pt", *args)
    one_line_error(code, err, message)
    assert not (tmp_path / "s.pt").exists()


def test_shortlist_refuses_to_overwrite_its_data_and_a_missing_data_dir(capsys, tmp_path,
                                                                       data_dir):
    code, _, err = run(capsys, "shortlist", "--data", data_dir, "--out", data_dir / "vocab.tgt")
    one_line_error(code, err, "--out", "is the same file as --data")
    code, _, err = run(capsys, "shortlist", "--data", tmp_path, "--out", tmp_path / "s.pt")
    one_line_error(code, err, "not a data directory")


def test_translate_and_evaluate_decode_with_the_shortlist(capsys, tmp_path, corpus, trained_run,
                                                          shortlist_file):
    from seq2seq.translator import Translator

    model, src = trained_run / "best.pt", corpus["valid_src"]
    lines = src.read_text(encoding="utf-8").splitlines()
    listed = Translator.load(model, device="cpu", shortlist=shortlist_file)
    exact = Translator.load(model, device="cpu")
    code, out, _ = run(capsys, "translate", "--model", model, "--shortlist", shortlist_file,
                       "--input", src, "--beam", 2, "--nbest", 2)
    assert code == 0
    # the scores are normalised over the shortlist: not the exact ones
    for want in (listed, exact):
        printed = [f"{i} ||| {text} ||| {score:.4f}" for i, t in
                   enumerate(want.translate(lines, beam=2, nbest=2)) for text, score in t.nbest]
        assert (out.splitlines() == printed) == (want is listed)
    hyps = tmp_path / "hyps.fr"
    code, out, _ = run(capsys, "evaluate", "--model", model, "--shortlist", shortlist_file,
                       "--src", src, "--ref", corpus["valid_tgt"], "--beam", 2, "--json",
                       "--hyps", hyps)
    assert code == 0 and json.loads(out)["shortlist"] == str(shortlist_file)
    assert hyps.read_text(encoding="utf-8").splitlines() == [
        t.text for t in listed.translate(lines, beam=2)]


def test_a_shortlist_of_other_data_or_a_bad_one_is_a_one_line_error(capsys, tmp_path, corpus,
                                                                    trained_run):
    (tmp_path / "a.en").write_text("the cat\nthe dog\n")
    (tmp_path / "a.fr").write_text("le chat\nle chien\n")
    code, _, _ = run(capsys, *prepare_args(tmp_path / "a.en", tmp_path / "a.fr", tmp_path / "d"))
    assert code == 0
    other = tmp_path / "other.pt"
    assert main(["shortlist", "--data", str(tmp_path / "d"), "--out", str(other)]) == 0
    capsys.readouterr()
    model = trained_run / "best.pt"
    for verb in (["translate", "--input", corpus["valid_src"]],
                 ["evaluate", "--src", corpus["valid_src"], "--ref", corpus["valid_tgt"]],
                 ["serve"]):
        code, _, err = run(capsys, *verb, "--model", model, "--shortlist", other)
        one_line_error(code, err, f"{other}: built for another source vocabulary")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    code, _, err = run(capsys, "serve", "--model", model, "--shortlist", tmp_path / "bad.pt")
    one_line_error(code, err, f"{tmp_path / 'bad.pt'}: not a readable shortlist")


def test_serve_decodes_with_its_shortlist(capsys, monkeypatch, trained_run, shortlist_file):
    import httpx
    import uvicorn

    from conftest import running

    apps = []
    with monkeypatch.context() as patch:  # serve builds the app, and does not run it
        patch.setattr(uvicorn.Server, "run", lambda self, *a, **k: apps.append(self.config.app))
        code, _, _ = run(capsys, "serve", "--model", trained_run / "best.pt", "--shortlist",
                         shortlist_file)
    assert code == 0
    with running(apps[0]) as url:
        assert httpx.get(f"{url}/health").json()["shortlist"] is True
