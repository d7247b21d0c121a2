import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import needs_bf16, tiny_config
from seq2seq.checkpoint import average_checkpoints, load_checkpoint
from seq2seq.config import OptimConfig, TrainConfig, config_from_dict
from seq2seq.errors import ConfigError, TrainingStopped
from seq2seq.rundir import RunDir
from seq2seq.train import Trainer, clip_grad_norm, learning_rate


def test_paper_learning_rate_schedule():
    o = OptimConfig()  # lr 0.7, halve every half epoch after epoch 5
    assert [learning_rate(o, e) for e in (0, 4.99, 5.0, 5.49, 5.5, 6.0, 7.4)] == pytest.approx(
        [0.7, 0.7, 0.35, 0.35, 0.175, 0.0875, 0.7 / 32])


def test_training_lowers_validation_perplexity_and_writes_metrics(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    valid = [r["valid_ppl"] for r in records if "valid_ppl" in r]
    train = [r for r in records if "loss" in r]
    assert len(valid) == 2 and valid[1] < valid[0]
    assert train[-1]["loss"] < train[0]["loss"]
    assert all(r["tgt_tok_s"] > 0 for r in train)
    assert {p.name for p in trained_run.iterdir()} == {
        "best.pt", "last.pt", "config.yaml", "metrics.jsonl", "train.lock"}
    best = load_checkpoint(trained_run / "best.pt")
    assert "optimizer" not in best and best["config"]["model"]["reverse_source"]


def _params(path):
    return load_checkpoint(path)["model"]


def _run_command(cfg_path, data_dir, out):
    return [sys.executable, "-m", "seq2seq", "train", str(cfg_path), "--data", str(data_dir),
            "--out", str(out)]


def _last_step(out):
    try:
        return max(json.loads(line)["step"] for line in (out / "metrics.jsonl").open())
    except (FileNotFoundError, ValueError):
        return 0


def test_run_killed_mid_training_resumes_to_the_same_parameters(data_dir, tmp_path):
    steps = 300
    cfg = tiny_config(optim={"max_steps": steps, "optimizer": "sgd", "lr": 0.5},
                      model={"dropout": 0.1},  # uses the RNG, which must resume too
                      train={"log_every": 5, "valid_every": 100, "checkpoint_every": 20})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    whole = tmp_path / "whole"
    subprocess.run(_run_command(cfg_path, data_dir, whole), check=True, env=env,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_run_command(cfg_path, data_dir, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _last_step(killed) < 130 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = load_checkpoint(killed / "last.pt")["step"]
    assert 0 < interrupted_at < steps, "the run was not interrupted mid-training"

    subprocess.run(_run_command(cfg_path, data_dir, killed), check=True, env=env,
                   capture_output=True)
    a, b = _params(whole / "last.pt"), _params(killed / "last.pt")
    assert load_checkpoint(killed / "last.pt")["step"] == steps
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The metrics of the lost steps were replaced, not duplicated.
    steps_logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").open()
                    if "loss" in line]
    assert steps_logged == sorted(set(steps_logged))
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(data_dir, tmp_path):
    cfg = tiny_config(optim={"max_steps": 100_000},
                      train={"log_every": 5, "valid_every": 100_000})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(_run_command(cfg_path, data_dir, out), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _last_step(out) < 5 and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run([*_run_command(cfg_path, data_dir, out), "model.hidden_size=48",
                             "optim.max_steps=3"],
                            env=env, capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert second.returncode == 2
    assert f"is in use by another process (PID {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    # The first run's files are the first run's alone, and it resumes.
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["hidden_size"] == 32
    step = load_checkpoint(out / "last.pt")["step"]
    assert load_checkpoint(out / "last.pt")["model"]["encoder.lstm.weight_hh_l0"].shape[1] == 32
    resumed = tiny_config(optim={"max_steps": step + 2},
                          train={"log_every": 5, "valid_every": 100_000})
    Trainer(config_from_dict(resumed), data_dir, out).train()  # the lock went with the run
    assert load_checkpoint(out / "last.pt")["step"] == step + 2


def test_resume_refuses_a_different_config(data_dir, tmp_path):
    cfg = tiny_config(optim={"max_steps": 4}, train={"valid_every": 2})
    Trainer(config_from_dict(cfg), data_dir, tmp_path).train()
    changed = tiny_config(optim={"max_steps": 4, "lr": 0.5}, train={"valid_every": 2})
    with pytest.raises(ConfigError, match="started with optim.lr=0.01, now 0.5"):
        Trainer(config_from_dict(changed), data_dir, tmp_path).train()
    # Extending the budget is allowed and continues from step 4.
    longer = tiny_config(optim={"max_steps": 6}, train={"valid_every": 2})
    Trainer(config_from_dict(longer), data_dir, tmp_path).train()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 6


def test_rerunning_a_finished_run_changes_nothing_and_keeps_the_clock(data_dir, tmp_path):
    cfg = config_from_dict(tiny_config(optim={"max_steps": 4}, train={"valid_every": 2}))
    first = Trainer(cfg, data_dir, tmp_path).train()
    metrics = (tmp_path / "metrics.jsonl").read_text()
    before = load_checkpoint(tmp_path / "last.pt")
    again = Trainer(cfg, data_dir, tmp_path).train()
    assert again == first
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # no second validation line
    assert load_checkpoint(tmp_path / "last.pt")["elapsed"] == before["elapsed"] > 0
    # A longer budget goes on from there, the clock too.
    longer = config_from_dict(tiny_config(optim={"max_steps": 6}, train={"valid_every": 2}))
    Trainer(longer, data_dir, tmp_path).train()
    valid = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()
             if "valid_ppl" in line]
    assert [r["step"] for r in valid] == [2, 4, 6]
    assert valid[1]["elapsed_s"] <= before["elapsed"] + 0.1  # the log rounds to 0.1 s
    assert load_checkpoint(tmp_path / "last.pt")["elapsed"] > before["elapsed"]


@needs_bf16
def test_bf16_training_tracks_fp32(data_dir, tmp_path):
    ppl = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(optim={"max_steps": 60}, train={"valid_every": 60,
                                                          "precision": precision})
        result = Trainer(config_from_dict(cfg), data_dir, tmp_path / precision).train()
        ppl[precision] = result["valid_ppl"]
    assert ppl["bf16"] == pytest.approx(ppl["fp32"], rel=0.02)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    torch.manual_seed(0)
    grads = [torch.randn(7, 3), torch.randn(11), torch.randn(2, 2, 2)]
    ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    ref = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for a, b, g in zip(ours, ref, grads):
        a.grad, b.grad = g.clone(), g.clone()
    norm = clip_grad_norm(ours, max_norm)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(ref, max_norm)))
    for a, b in zip(ours, ref):
        assert torch.allclose(a.grad, b.grad)


@pytest.mark.parametrize("trim_every, trims", [(3, [3, 6, 9]), (0, [])])
def test_trainer_trims_the_heap_every_n_updates(data_dir, tmp_path, monkeypatch,
                                                trim_every, trims):
    import seq2seq.train as train_module

    seen = {"trims": []}
    release = train_module.release_free_memory

    def counting_release(device):
        seen["trims"].append(trainer.step)
        release(device)

    monkeypatch.setattr(train_module, "release_free_memory", counting_release)
    cfg = tiny_config(optim={"max_steps": 10}, train={"valid_every": 10,
                                                      "trim_every": trim_every})
    trainer = Trainer(config_from_dict(cfg), data_dir, tmp_path)
    trainer.train()
    assert seen == {"trims": trims}
    assert TrainConfig().trim_every == 100  # the default: see seq2seq.device.release_free_memory


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_saves_and_exits_non_zero(data_dir, tmp_path, sig):
    cfg = tiny_config(optim={"max_steps": 100_000},
                      train={"log_every": 5, "valid_every": 100_000})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = subprocess.Popen(_run_command(cfg_path, data_dir, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while _last_step(out) < 10 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    step = load_checkpoint(out / "last.pt")["step"]
    assert 10 <= step < 100_000
    assert f"interrupted by {signal.Signals(sig).name} at step {step}: saved" in err
    assert "Traceback" not in err
    # The same command, with a budget, resumes from there.
    resumed = tiny_config(optim={"max_steps": step + 3},
                          train={"log_every": 5, "valid_every": 100_000})
    Trainer(config_from_dict(resumed), data_dir, out).train()
    assert load_checkpoint(out / "last.pt")["step"] == step + 3


def test_a_diverging_run_stops_naming_the_step_and_keeps_its_checkpoints(data_dir, tmp_path):
    good = tiny_config(optim={"max_steps": 4}, train={"valid_every": 4})
    Trainer(config_from_dict(good), data_dir, tmp_path).train()
    before = {name: (tmp_path / name).read_bytes() for name in ("last.pt", "best.pt")}
    diverging = tiny_config(optim={"max_steps": 40, "lr": 1e38}, train={"valid_every": 4})
    trainer = Trainer(config_from_dict(diverging), data_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"optim.lr=0.01, now 1e\+38"):
        trainer.train()  # a resumed run keeps its lr: a new run directory
    fresh = tmp_path / "fresh"
    with pytest.raises(TrainingStopped, match=r"step \d+: .*not finite.*no checkpoint yet"):
        Trainer(config_from_dict(diverging), data_dir, fresh).train()
    assert not (fresh / "best.pt").exists()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    # On a run with checkpoints, the message points at the last good one.
    later = tmp_path / "later"
    Trainer(config_from_dict(good), data_dir, later).train()
    state = load_checkpoint(later / "last.pt")
    next(iter(state["model"].values())).fill_(float("inf"))  # as if a step had overflowed
    from seq2seq.checkpoint import save_checkpoint

    save_checkpoint(state, later / "last.pt")
    longer = tiny_config(optim={"max_steps": 8}, train={"valid_every": 4})
    with pytest.raises(TrainingStopped, match=r"step 5: .*last.pt \(step 4\) is the last good"):
        Trainer(config_from_dict(longer), data_dir, later).train()


def test_skipping_non_finite_batches_counts_them_and_trains_on(data_dir, tmp_path, caplog):
    cfg = tiny_config(optim={"max_steps": 12}, train={"valid_every": 12, "log_every": 4,
                                                      "nonfinite": "skip"})
    trainer = Trainer(config_from_dict(cfg), data_dir, tmp_path)
    forward, calls = trainer.ddp_model.forward, []

    def poisoned(*args, **kwargs):  # the 5th batch's loss is NaN, as from an overflow
        calls.append(1)
        loss, nll = forward(*args, **kwargs)
        return (loss * float("nan"), nll) if len(calls) == 5 else (loss, nll)

    trainer.ddp_model.forward = poisoned
    result = trainer.train()
    assert trainer.skipped == 1 and trainer.step == 12
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if "batch skipped" in r.getMessage()] == [
        ("WARNING", "step 5: loss nan, gradient norm nan (not finite); batch skipped (1 so far)")]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert result["valid_ppl"] < float("inf") and (tmp_path / "best.pt").exists()


def test_a_non_finite_gradient_is_caught_without_clipping_too(data_dir, tmp_path):
    cfg = tiny_config(optim={"max_steps": 8, "clip_norm": 0.0},
                      train={"valid_every": 8, "nonfinite": "skip"})
    trainer = Trainer(config_from_dict(cfg), data_dir, tmp_path)
    calls = []

    def poison(grad):  # the 3rd backward's gradient is NaN while its loss is finite
        calls.append(1)
        return grad * float("nan") if len(calls) == 3 else grad

    trainer.model.decoder.output.weight.register_hook(poison)
    trainer.train()
    assert trainer.skipped == 1 and trainer.step == 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_validation_bleu_equals_evaluate_on_the_same_sentences(trained_run, data_dir, corpus):
    from seq2seq.evaluate import evaluate
    from seq2seq.translator import Translator

    cfg = tiny_config(train={"valid_metrics": ["ppl", "bleu"], "valid_bleu_sentences": 40})
    trainer = Trainer(config_from_dict(cfg), data_dir, trained_run / "unused")
    trainer.model.load_state_dict(_params(trained_run / "best.pt"))
    valid = trainer.validate_bleu()
    sources = corpus["valid_src"].read_text(encoding="utf-8").splitlines()[:40]
    refs = corpus["valid_tgt"].read_text(encoding="utf-8").splitlines()[:40]
    metrics, _ = evaluate(Translator.load(trained_run / "best.pt", device="cpu"), sources,
                          refs, beam=1)
    assert valid["valid_bleu"] == metrics["bleu"] > 0
    assert valid["valid_bleu_s"] > 0


# Validation perplexities by step, for the tests of choosing and stopping.
SCRIPTED_PPL = {2: 10.0, 4: 8.0, 6: 9.0, 8: 8.5, 10: 7.0, 12: 7.5, 14: 12.0, 16: 11.0}


@pytest.fixture
def scripted_validation(monkeypatch):
    """Trainer.validate returns SCRIPTED_PPL at each step (the rest of the run is real)."""
    monkeypatch.setattr(Trainer, "validate", lambda self: {
        "valid_nll": math.log(SCRIPTED_PPL[self.step]), "valid_ppl": SCRIPTED_PPL[self.step]})


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


def test_early_stopping_stops_at_the_right_validation_and_resumes_the_count(
        data_dir, tmp_path, scripted_validation, caplog):
    caplog.set_level("INFO", logger="seq2seq")

    def run(out, max_steps, patience=2):
        cfg = tiny_config(optim={"max_steps": max_steps},
                          train={"valid_every": 2, "log_every": 2, "patience": patience})
        return Trainer(config_from_dict(cfg), data_dir, out).train()

    # 10, 8 (best), 9, 8.5: the second validation without gain stops the run at step 8
    whole = run(tmp_path / "whole", 16)
    assert whole["step"] == 8 and "early_stop" in whole
    assert "early stopping: valid ppl not better than 8 (step 4) for 2 validations" in \
        whole["early_stop"]
    assert whole["early_stop"] in caplog.text
    assert _records(tmp_path / "whole")[-1] == whole
    # stopped after step 6 (one validation without gain), resumed: the count goes on
    run(tmp_path / "resumed", 6)
    resumed = run(tmp_path / "resumed", 16)
    assert [resumed[k] for k in ("step", "valid_ppl", "early_stop")] == \
        [whole[k] for k in ("step", "valid_ppl", "early_stop")]
    assert load_checkpoint(tmp_path / "resumed" / "last.pt", training=True)["selection"] == {
        "best": 8.0, "best_step": 4, "since_best": 2, "kept": []}
    # more patience resumes the stopped run: 7.0 at step 10 is a new best
    assert run(tmp_path / "resumed", 16, patience=3)["step"] == 16
    assert _params(tmp_path / "resumed" / "best.pt").keys()
    assert load_checkpoint(tmp_path / "resumed" / "best.pt")["step"] == 10


def test_numbered_checkpoints_keep_the_last_and_the_best(data_dir, tmp_path,
                                                         scripted_validation):
    cfg = tiny_config(optim={"max_steps": 16},
                      train={"valid_every": 4, "checkpoint_every": 2, "log_every": 2,
                             "keep_last": 2, "keep_best": 2})
    Trainer(config_from_dict(cfg), data_dir, tmp_path).train()
    names = sorted(p.name for p in tmp_path.glob("*-*.pt"))
    # validations at 4, 8, 12, 16: ppl 8, 8.5, 7.5, 11; the two best are 7.5 and 8
    assert names == ["best-00000004.pt", "best-00000012.pt", "step-00000014.pt",
                     "step-00000016.pt"]
    assert load_checkpoint(tmp_path / "best-00000012.pt")["model"].keys() == \
        load_checkpoint(tmp_path / "best.pt")["model"].keys()
    assert not list(tmp_path.glob(".*.tmp-*"))
    last_two = RunDir(tmp_path).last_checkpoints(2)  # what `seq2seq average --last 2` averages
    assert [p.name for p in last_two] == ["step-00000014.pt", "step-00000016.pt"]
    assert average_checkpoints(last_two)["step"] == 16


def test_best_pt_is_chosen_by_bleu_when_the_config_says_so(data_dir, tmp_path, monkeypatch,
                                                          scripted_validation):
    bleu = {4: 3.0, 8: 5.0, 12: 4.0}
    monkeypatch.setattr(Trainer, "validate_bleu", lambda self: {"valid_bleu": bleu[self.step],
                                                               "valid_bleu_s": 0.1})
    cfg = tiny_config(optim={"max_steps": 12},
                      train={"valid_every": 4, "log_every": 4,
                             "valid_metrics": ["ppl", "bleu"], "best_metric": "bleu"})
    Trainer(config_from_dict(cfg), data_dir, tmp_path).train()
    valid = [r for r in _records(tmp_path) if "valid_ppl" in r]
    assert [(r["valid_bleu"], r["best"]) for r in valid] == [(3.0, True), (5.0, True),
                                                             (4.0, False)]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 8 and best["best_valid_ppl"] == 8.0  # the lowest perplexity
    assert load_checkpoint(tmp_path / "last.pt")["best_valid_ppl"] == 7.5  # so far


def test_tensorboard_scalars_are_written_and_read_back(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(optim={"max_steps": 8}, train={"valid_every": 4, "log_every": 4,
                                                      "tensorboard": True})
    Trainer(config_from_dict(cfg), data_dir, tmp_path).train()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    records = _records(tmp_path)
    for name in ("loss", "ppl", "lr", "grad_norm", "tgt_tok_s", "valid_ppl"):
        logged = [(r["step"], r[name]) for r in records if name in r]
        read = [(e.step, e.value) for e in events.Scalars(name)]
        assert read == [(s, pytest.approx(v, rel=1e-6)) for s, v in logged], name


def test_a_validation_beam_search_refuses_is_refused_before_training(data_dir, tmp_path):
    cfg = tiny_config(train={"valid_metrics": ["ppl", "bleu"], "valid_beam": 1000})
    with pytest.raises(ConfigError, match="train.valid_beam: beam must be"):
        Trainer(config_from_dict(cfg), data_dir, tmp_path)


def test_tensorboard_asked_for_but_missing_is_a_one_line_error(data_dir, tmp_path,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = tiny_config(train={"tensorboard": True})
    with pytest.raises(ConfigError, match=r"train.tensorboard: true needs the tensorboard "
                                          r"package: pip install 'seq2seq\[tensorboard\]'"):
        Trainer(config_from_dict(cfg), data_dir, tmp_path)


def test_ema_is_the_moving_average_of_the_weights_validated_and_resumed(data_dir, tmp_path):
    def config(steps):
        return config_from_dict(tiny_config(optim={"max_steps": steps}, model={"dropout": 0.1},
                                            train={"valid_every": 2, "log_every": 2,
                                                   "ema": 0.5, "keep_last": 1}))

    trainer = Trainer(config(2), data_dir, tmp_path / "by-hand")
    weights = [{n: p.detach().clone() for n, p in trainer.model.named_parameters()}]
    for _ in range(2):
        trainer.train_next()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    for name, average in trainer.ema.state_dict().items():  # 0.25 w0 + 0.25 w1 + 0.5 w2
        w0, w1, w2 = (w[name] for w in weights)
        assert torch.allclose(average, 0.25 * w0 + 0.25 * w1 + 0.5 * w2, atol=1e-7), name
    with trainer.ema.swapped_in():
        assert torch.equal(trainer.model.decoder.output.weight,
                           trainer.ema.weights["decoder.output.weight"])
    for name, p in trainer.model.named_parameters():  # the weights themselves are back
        assert torch.equal(p, weights[2][name]), name
    # step-N.pt (and best.pt) hold the average, last.pt both; resuming keeps averaging
    Trainer(config(4), data_dir, tmp_path / "whole").train()
    Trainer(config(2), data_dir, tmp_path / "resumed").train()
    Trainer(config(4), data_dir, tmp_path / "resumed").train()
    for run in ("whole", "resumed"):
        last = load_checkpoint(tmp_path / run / "last.pt", training=True)
        kept = load_checkpoint(tmp_path / run / "step-00000004.pt")
        for name, average in last["ema"].items():
            assert torch.equal(kept["model"][name], average), name
        assert not torch.equal(last["model"]["decoder.output.weight"],
                               last["ema"]["decoder.output.weight"])
    whole, resumed = (load_checkpoint(tmp_path / r / "step-00000004.pt")["model"]
                      for r in ("whole", "resumed"))
    for name, w in whole.items():
        assert torch.equal(resumed[name], w), name
