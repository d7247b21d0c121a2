"""The docs point at real things: every test that docs/RELIABILITY.md names exists, and
every benchmark command names a script of bench/ and options that it has."""

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_reliability_exists():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    named = 0
    for row in rows[1:]:
        cell = row.rstrip(" |").rsplit("|", 1)[-1]
        current = None
        for file, name in re.findall(r"`(?:(test_\w+\.py))?(?:::(\w+))?`", cell):
            current = file or current
            assert current, f"a test name without its file: {row}"
            source = (ROOT / "tests" / current).read_text(encoding="utf-8")
            if name:
                assert re.search(rf"def {name}\(", source), f"{current}::{name} not found"
                named += 1
    assert named > 30


def test_every_benchmark_command_names_a_script_and_its_options():
    # LOG.md keeps its commands as they were run (`python bench/NAME.py`): not checked.
    docs = ["README.md", "Makefile", "docs/scaling.md", "bench/README.md", "bench/RESULTS.md",
            "bench/SCALING.md", "bench/SERVE.md"]
    commands = 0
    for doc in docs:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for name, args in re.findall(r"python -m bench\.([a-z0-9_]+)([^`\n]*)", text):
            script = ROOT / "bench" / f"{name}.py"
            assert script.exists(), f"{doc}: python -m bench.{name}, but no {script.name}"
            source = script.read_text(encoding="utf-8")
            for option in re.findall(r"\s(--[\w-]+)", args.split(" -- ")[0]):
                assert f'"{option}"' in source, f"{doc}: bench.{name} has no {option}"
            commands += 1
    assert commands > 20


def test_bench_readme_has_a_row_for_every_benchmark():
    text = (ROOT / "bench" / "README.md").read_text(encoding="utf-8")
    for script in sorted((ROOT / "bench").glob("*.py")):
        if script.stem not in ("__init__", "common"):
            assert f"python -m bench.{script.stem}" in text, f"bench/README.md: no {script.stem}"


def test_server_defaults_quoted_in_the_docs_are_the_limits_defaults():
    # "`--header-timeout` (10 s)" in RELIABILITY.md; "(the default: `--batch-wait-ms 5
    # --max-batch-sentences 64`)" in SERVE.md. (README's table: test_cli.py.)
    from seq2seq.serve.limits import SETTINGS, shown_default

    defaults = {f.metadata["flag"]: shown_default(f)
                for settings in SETTINGS for f in dataclasses.fields(settings)}
    quoted = 0
    for doc in ("docs/RELIABILITY.md", "bench/SERVE.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        pairs = re.findall(r"`(--[\w-]+)` \((\d[\d,.]*)", text)
        for span in re.findall(r"default:\s*`([^`]*)`", text):
            pairs += re.findall(r"(--[\w-]+) (\S+)", span)
        for flag, value in pairs:
            if flag in defaults:
                assert value.replace(",", "") == defaults[flag], \
                    f"{doc}: {flag} {value}, but its default is {defaults[flag]}"
                quoted += 1
    assert quoted >= 6
