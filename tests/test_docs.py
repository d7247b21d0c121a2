"""The docs point at real things: every test that docs/RELIABILITY.md names exists."""

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
