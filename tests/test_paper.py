"""`make paper-quick`: every task of experiments/paper.py at a tiny size, then the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HANSARD = ROOT.parent / "shared" / "data" / "hansard-en-fr"
sys.path.insert(0, str(ROOT / "experiments"))

import paper  # noqa: E402


def test_plan_pairs_every_reversal_with_its_forward_seed():
    tasks = {t.name: t for t in paper.plan(list(paper.REGIMES.values()))}
    runs = paper.TATOEBA_REGIME.runs()
    assert runs[:3] == ["forward-seed1", "words-seed1", "pieces-seed1"]  # side by side
    assert len(runs) == 9 and len(paper.HANSARD_REGIME.runs()) == 4
    assert tasks["tatoeba/paired"].after == tuple(f"tatoeba/model/{n}" for n in runs)
    assert paper.comparisons(paper.TATOEBA_REGIME) == [
        ("forward", "words"), ("forward", "pieces"), ("pieces", "words")]
    assert paper.comparisons(paper.HANSARD_REGIME) == [("forward", "words")]
    # A regime's results depend on its own settings only.
    quick = paper.QUICK
    t = tasks["tatoeba/train/words-seed2"]
    assert paper.settings_of(quick, (), t) != paper.settings_of(paper.REGIMES, (), t)
    assert paper.settings_of(paper.REGIMES, (), t) == paper.settings_of(
        {**paper.REGIMES, "hansard": quick["hansard"]}, (), t)


def test_train_commands_set_only_direction_and_seed():
    p = paper.Paths(ROOT / "work" / "paper", ROOT / "results", HANSARD)
    r = paper.TATOEBA_REGIME
    a, b = (paper.train_command(p, r, n) for n in ("forward-seed2", "words-seed2"))
    differ = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(a) == len(b) and differ == [
        ("work/paper/tatoeba/runs/forward-seed2", "work/paper/tatoeba/runs/words-seed2"),
        ("model.reverse_source=none", "model.reverse_source=words")]
    assert "train.seed=2" in a and "train.threads=1" in a


@pytest.mark.slow
@pytest.mark.skipif(not (HANSARD / "train.en.gz").exists(), reason="../shared/data not beside")
def test_paper_quick_runs_every_task_and_writes_a_portable_report(tmp_path):
    out = tmp_path / "RESULTS.md"
    argv = [sys.executable, str(ROOT / "experiments" / "paper.py"), "--quick", "--work",
            str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--out", str(out),
            "--figures", str(tmp_path / "figures")]
    subprocess.run(argv, check=True, capture_output=True)
    results = {p.relative_to(tmp_path / "results").with_suffix("").as_posix()
               for p in (tmp_path / "results").rglob("*.json")}
    expected = {"synthetic"}
    for name, r in paper.QUICK.items():
        expected |= {f"{name}/{kind}/{run}" for kind in ("train", "model") for run in r.runs()}
        expected |= {f"{name}/paired", f"{name}/pca"}
    expected |= {"hansard/ensemble", "hansard/rescore"}
    assert results == expected
    results_dir = tmp_path / "results"
    model = json.loads((results_dir / "hansard" / "model" / "words-seed1.json").read_text())
    assert [b["beam"] for b in model["beams"]] == [1, 12]
    assert len(model["sentence_nll"]) == len(model["sentence_words"]) == 40
    assert sum(b["sentences"] for b in model["by_length"]) == 40
    assert sum(b["sentences"] for b in model["by_rarity"]) == 40
    assert sum(b["tokens"] for b in model["ppl_profile"]["by_position"]) == \
        sum(model["sentence_pieces"])
    paired = json.loads((results_dir / "tatoeba" / "paired.json").read_text())
    assert set(paired["comparisons"]) == {"words-vs-forward", "pieces-vs-forward",
                                          "words-vs-pieces"}
    c = paired["comparisons"]["words-vs-forward"]
    forward = [json.loads((results_dir / "tatoeba" / "model" / f"forward-seed{k}.json")
                          .read_text()) for k in (1, 2)]
    words = [json.loads((results_dir / "tatoeba" / "model" / f"words-seed{k}.json")
                        .read_text()) for k in (1, 2)]
    assert c["over_seeds"]["ppl"]["differences"] == pytest.approx(
        [w["ppl"] - f["ppl"] for f, w in zip(forward, words)])
    train = json.loads((results_dir / "tatoeba" / "train" / "forward-seed1.json").read_text())
    assert "model.reverse_source=none" in train["command"] and train["steps"] == 30
    text = out.read_text()
    for heading in ("ours beside the published ones", "Competent models on short sentences",
                    "Long sentences", "Paired effects", "Validation curves", "By source length",
                    "Where reversal acts", "word rarity", "Ensemble", "Rescoring", "Figure 2",
                    "synthetic task", "Commands and wall times", "Luong"):
        assert heading in text
    # No path of one machine: every path is relative (../../tmp/... for this test's).
    assert not re.findall(r"(?<![.\w])/(?:tmp|work|root|home)/", text)
    for name in ("curves-tatoeba", "curves-hansard", "length-hansard", "profile-hansard",
                 "rarity-hansard", "pca-tatoeba", "pca-hansard", "synthetic"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "figures" / f"{name}.svg").exists()
    # Done tasks are not run again, and the report comes back the same from the JSON.
    stamp = (results_dir / "tatoeba" / "train" / "forward-seed1.json").stat().st_mtime_ns
    subprocess.run(argv, check=True, capture_output=True)
    assert (results_dir / "tatoeba" / "train" / "forward-seed1.json").stat().st_mtime_ns == stamp
    assert out.read_text() == text
    subprocess.run([*argv, "--report"], check=True, capture_output=True)
    assert out.read_text() == text
