"""The experiments' scripts, end to end at a tiny budget (the full runs are documented)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _synthetic():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import synthetic
    finally:
        sys.path.pop(0)
    return synthetic


def test_synthetic_targets_are_the_mapped_source_in_each_tasks_order():
    synthetic = _synthetic()
    mapping = {"a0": "b2", "a1": "b0", "a2": "b1"}
    assert synthetic.target_of(["a0", "a1", "a2"], mapping, "monotone", 1) == ["b0", "b2", "b1"]
    assert synthetic.target_of(["a2", "a2", "a0", "a1"], mapping, "monotone", 1) == \
        ["b1", "b1", "b0", "b2"]
    assert synthetic.target_of(["a0", "a1", "a2", "a2"], mapping, "anti-monotone", 1) == \
        ["b1", "b1", "b0", "b2"]
    order = synthetic.permutation_of(4, seed=1)
    assert sorted(order) == [0, 1, 2, 3]
    assert synthetic.target_of(["a0", "a1", "a2", "a2"], mapping, "permutation", 1) == \
        [["b2", "b0", "b1", "b1"][i] for i in order]
    with pytest.raises(ValueError, match="task 'sorted'"):
        synthetic.target_of(["a0"], mapping, "sorted", 1)


def test_synthetic_permutation_is_fixed_per_length_and_seed():
    synthetic = _synthetic()
    orders = {n: synthetic.permutation_of(n, seed=1) for n in range(5, 31)}
    assert all(sorted(o) == list(range(n)) for n, o in orders.items())
    assert orders == {n: synthetic.permutation_of(n, seed=1) for n in range(5, 31)}
    # Neither direction's order: not the identity nor the reversal, and another seed
    # draws others.
    assert all(o not in (list(range(n)), list(range(n))[::-1]) for n, o in orders.items())
    assert orders != {n: synthetic.permutation_of(n, seed=2) for n in range(5, 31)}


def test_synthetic_tasks_share_their_sources_and_differ_only_in_target_order(tmp_path):
    synthetic = _synthetic()
    sizes = {"train": 60, "valid": 5, "test": 5}
    pairs = {task: synthetic.generate(tmp_path / task, task, sizes, 5, 9, 6, seed=4)
             for task in synthetic.TASKS}
    assert (tmp_path / "monotone" / "train.src").read_text().splitlines() == \
        [s for s, _ in pairs["monotone"]["train"]]
    sources = [s for s, _ in pairs["monotone"]["train"]]
    assert all([s for s, _ in pairs[task]["train"]] == sources for task in synthetic.TASKS)
    assert all(5 <= len(s.split()) <= 9 for s in sources)
    # The mapping, read off the anti-monotone task: each source symbol's one image.
    images = {}
    for s, t in pairs["anti-monotone"]["train"]:
        for a, b in zip(s.split(), reversed(t.split())):
            assert images.setdefault(a, b) == b
    assert len(set(images.values())) == len(images) == 6
    mapped = [[images[a] for a in s.split()] for s in sources]
    monotone = [t.split() for _, t in pairs["monotone"]["train"]]
    assert all(t == [m[i ^ 1] if i ^ 1 < len(m) else m[i] for i in range(len(m))]
               for t, m in zip(monotone, mapped))  # i ^ 1: i's neighbour in its pair
    # The permutation task: one reordering per length, the same for every sentence.
    for n in range(5, 10):
        order = synthetic.permutation_of(n, seed=4)
        rows = [(m, t.split()) for m, (_, t) in zip(mapped, pairs["permutation"]["train"])
                if len(m) == n]
        assert rows and all(t == [m[i] for i in order] for m, t in rows)
    again = synthetic.generate(tmp_path / "again", "permutation", sizes, 5, 9, 6, seed=4)
    assert again == pairs["permutation"]  # a seed gives one task
    other = synthetic.generate(tmp_path / "other", "permutation", sizes, 5, 9, 6, seed=5)
    assert other != pairs["permutation"]


def test_synthetic_table_pairs_the_directions_by_seed():
    synthetic = _synthetic()

    def run(em, ppl, curve):
        return {"exact_match": em, "ppl": ppl,
                "curve": [{"step": 100 * (i + 1), "valid_ppl": p} for i, p in enumerate(curve)]}

    e = math.e
    results = {"tasks": {"monotone": {
        "forward": {"1": run(0.5, 2.0, [e ** 2, e]), "2": run(0.7, 1.5, [e, e])},
        "reversed": {"1": run(0.9, 1.1, [e, 1.0]), "2": run(1.0, 1.0, [e, 1.0])}}}}
    lines = synthetic.table(results)
    assert lines[0].startswith("| task | source | exact match, seed 1 | exact match, seed 2 | "
                               "exact match, mean | test ppl, seed 1 |")
    assert len({line.count("|") for line in lines}) == 1
    assert lines[2] == "| monotone | forward | 50.0% | 70.0% | **60.0%** | 2.000 | 1.500 | " \
        "**1.750** | 1.500 | 1.000 | **1.250** |"
    assert lines[4] == "| monotone | reversed − forward | +40.0% | +30.0% | **+35.0%** | " \
        "-0.900 | -0.500 | **-0.700** | -1.000 | -0.500 | **-0.750** |"


@pytest.mark.slow
def test_synthetic_quick_run_reversal_helps_monotone_and_resumes(tmp_path):
    """The paper's mechanism, as a real training outcome: same data, initial weights, batch
    order and updates per seed, and reversal lowers the monotone task's validation loss
    (and raises the anti-monotone one's); a second run trains nothing again."""
    out, work = tmp_path / "synthetic.json", tmp_path / "work"
    argv = [sys.executable, str(ROOT / "experiments" / "synthetic.py"), "--quick", "--work",
            str(work), "--out", str(out), "--figure", str(tmp_path / "synthetic")]
    subprocess.run(argv, check=True, capture_output=True)
    results = json.loads(out.read_text())
    tasks = results["tasks"]
    assert list(tasks) == ["monotone", "anti-monotone", "permutation"]
    for runs in tasks.values():
        assert list(runs) == ["forward", "reversed"]
        for by_seed in runs.values():
            assert list(by_seed) == ["1", "2", "3"]
            for m in by_seed.values():
                assert 0 <= m["exact_match"] <= 1 and m["ppl"] >= 1 and m["valid_ppl"] >= 1
                assert [c["step"] for c in m["curve"]] == [50, 100, 150, 200, 250, 300]
                assert sum(b["sentences"] for b in m["by_length"]) == 300

    def nll(task, direction):  # the mean over seeds of the best validation NLL
        runs = tasks[task][direction].values()
        return sum(math.log(m["valid_ppl"]) for m in runs) / len(runs)

    # Measured (--quick, one thread, AMD EPYC): monotone forward 1.846, reversed 1.391
    # nats per token; anti-monotone forward 1.154, reversed 1.813 (each seed the same way).
    assert nll("monotone", "reversed") < nll("monotone", "forward") - 0.2
    assert nll("anti-monotone", "forward") < nll("anti-monotone", "reversed") - 0.2
    assert len(_synthetic().table(results)) == 2 + 3 * 3  # head, and 3 rows a task
    assert (tmp_path / "synthetic.png").stat().st_size > 0
    # A second run of a subset reads every model's results back and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*.pt")}
    subprocess.run([*argv[:2], "--quick", "--tasks", "monotone", "--seeds", "2", "--work",
                    str(work), "--out", str(tmp_path / "again.json"), "--figure", ""],
                   check=True, capture_output=True)
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["tasks"] == {"monotone": {d: {"2": tasks["monotone"][d]["2"]}
                                           for d in ("forward", "reversed")}}
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.pt")} == stamps
