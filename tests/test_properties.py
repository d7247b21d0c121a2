"""Property tests (hypothesis): any input to the tokenizers, the config loader, the n-best
parser and the HTTP API either works or is refused with our error, never a crash."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import running
from seq2seq.analysis import read_nbest
from seq2seq.config import Config, load_config
from seq2seq.errors import ConfigError, DataError
from seq2seq.serve import Batching, Limits, create_app
from seq2seq.text import Tokenizer, normalize
from seq2seq.translator import Translator

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)  # Cs: lone surrogates
MOSES = Tokenizer("moses", "en")
SPACE = Tokenizer("space", "en")


@given(TEXT)
def test_normalize_is_idempotent_and_leaves_no_odd_whitespace(line):
    once = normalize(line)
    assert normalize(once) == once
    assert once == once.strip() and "  " not in once


@given(TEXT)
@settings(max_examples=200)
def test_tokenizers_give_non_empty_tokens_without_spaces(line):
    for tok in (MOSES, SPACE):
        tokens = tok.tokenize(line)
        assert all(t and " " not in t for t in tokens)
        assert isinstance(tok.detokenize(tokens), str)
    assert SPACE.detokenize(SPACE.tokenize(line)) == normalize(line)


KEYS = [f"{section}.{f}" for section, cls in Config.__dataclass_fields__.items()
        for f in cls.default_factory().__dataclass_fields__]


@given(st.sampled_from(KEYS + ["optim.nope", "nope.lr", "optim", ".lr"]),
       st.one_of(TEXT, st.integers().map(str), st.floats().map(str),
                 st.sampled_from(["1e-3", ".nan", "-.inf", "true", "null", "[1, 2]", "{a: 1}"])))
@settings(max_examples=300)
def test_any_override_loads_or_is_a_config_error(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError:
        return
    assert isinstance(cfg, Config)


@given(st.lists(st.tuples(st.integers(0, 10**6), TEXT.filter(lambda t: "|||" not in t and
                                                              "\n" not in t and "\r" not in t),
                          st.floats(allow_nan=False, allow_infinity=False, width=32)),
                max_size=10))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_nbest_lines_round_trip(tmp_path, entries):
    path = tmp_path / "n.txt"
    path.write_text("".join(f"{i} ||| {text} ||| {score!r}\n" for i, text, score in entries),
                    encoding="utf-8")
    got = read_nbest(path)
    assert [(e.source, e.score) for e in got] == [(i, s) for i, _, s in entries]
    assert [e.text for e in got] == [text.strip() for _, text, _ in entries]


@given(st.text(max_size=60))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_nbest_line_parses_or_is_a_data_error(tmp_path, line):
    path = tmp_path / "n.txt"
    path.write_text(line.replace("\r", "") + "\n", encoding="utf-8", errors="replace")
    try:
        read_nbest(path)
    except DataError as err:
        assert "n.txt" in str(err)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
BODIES = st.fixed_dictionaries(
    {}, optional={"sentences": st.lists(TEXT, max_size=3) | JSON, "beam": JSON | st.integers(),
                  "nbest": JSON | st.integers(), "length_penalty": JSON | st.floats(),
                  "extra": JSON})


@pytest.fixture(scope="module")
def server(trained_run):
    translator = Translator.load(trained_run / "best.pt", device="cpu")
    app = create_app(translator, Limits(max_body_bytes=20_000, max_sentences=3, max_chars=60),
                     Batching(wait_ms=0, max_sentences=8))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@given(BODIES)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_translate_body_is_answered_or_refused_never_a_500(server, body):
    r = server.post("/translate", content=json.dumps(body),  # NaN and Infinity included
                    headers={"content-type": "application/json"})
    assert r.status_code in (200, 413, 422), r.text
    if r.status_code == 200:
        assert len(r.json()["translations"]) == len(body["sentences"])
    else:
        assert r.json()["detail"]
