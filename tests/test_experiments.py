"""The experiments' scripts, end to end at a tiny budget (the full runs are documented)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_table1_writes_every_row_and_the_rescoring(data_dir, tmp_path):
    out = tmp_path / "RESULTS.md"
    subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "table1.py"), "--steps", "30",
         "--test-sentences", "30", "--data", str(data_dir), "--work", str(tmp_path / "work"),
         "--out", str(out), "model.embed_dim=24", "model.hidden_size=32", "train.threads=1"],
        check=True, capture_output=True)
    results = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["system"], r["beam"]) for r in results["rows"]}
    assert rows == {("forward", 12), ("reversed", 1), ("reversed", 2), ("reversed", 12),
                    ("ensemble of 2", 1), ("ensemble of 2", 12), ("ensemble of 3", 1),
                    ("ensemble of 3", 12)}
    assert sum(r["system"] == "reversed" for r in results["rows"]) == 9  # 3 seeds x 3 beams
    assert [r["reverse"] for r in results["runs"]] == [False, True, True, True]
    assert all(r["ppl"] > 1 for r in results["rows"] if "ppl" in r)
    resc = results["rescoring"]
    assert all(0 <= resc[k] <= 100 for k in ("bleu_before", "bleu_after", "oracle_bleu"))
    text = out.read_text()
    for heading in ("Reversing the source", "Beam size and ensembles", "Rescoring",
                    "What agrees with the paper", "Commands and wall times"):
        assert heading in text
    # The report can be written again from the JSON alone, with the same tables.
    again = tmp_path / "again.md"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "table1.py"), "--from-json",
                    str(out.with_suffix(".json")), "--out", str(again)], check=True,
                   capture_output=True)
    assert again.read_text().splitlines()[3:] == text.splitlines()[3:]
