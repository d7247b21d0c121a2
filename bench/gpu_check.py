"""The GPU check (issue 28): do the CUDA paths run, how fast, and does a killed run resume?

    PYTHONPATH=src python3 bench/gpu_check.py         # on a GPU machine (make gpu-check)
    .venv/bin/python -m bench.gpu_check --device cpu  # its CPU twin (tests/test_gpu_check.py)

Made for a GPU machine lent for a few minutes, with nothing to fetch: under five minutes on
one H100, and the data is made here, random words at the paper's vocabulary sizes and
sentence lengths (`synthetic_corpus`), prepared by `seq2seq.prepare` (space tokenizer).
Each stage runs in fresh processes and within its time limit, so that one failing stage
is reported and the next still runs:

1. train: the paper's preset (configs/sutskever2014.yaml: 4 x 1000 LSTMs, 1000-dim
   embeddings, 160k / 80k words, batches of 128), the trainer's own updates
   (`Trainer.train_next`) in fp32 (TF32 products), bf16 and fp16 autocast: target tok/s,
   and MFU against the matmul ceiling measured right after in the same process, each of
   the step's matmul shapes at the rate this device gives it (`bench.common`), and against
   a large square product (the device's peak).
2. decode: beam 12 with `Translator`, fp32 and bf16, of an untrained paper-size model
   (every hypothesis runs to the length limit: a fixed amount of work).
3. resume: `seq2seq train` of a smaller model, killed with SIGKILL mid-run and run again,
   must end with the weights of an uninterrupted run, bit for bit (tests/test_train.py
   checks it on the CPU); where it does not, a second uninterrupted run tells
   nondeterminism from a resume bug.
4. torchrun: data-parallel training on every visible GPU through NCCL, one process per
   GPU; the ranks must hold the same weights after. With one GPU the world has one rank:
   the trainer needs no DDP then, and NCCL runs the replica check alone.

The CPU twin runs the same stages at tiny sizes, with gloo and two processes under
torchrun. The summary (Markdown, then JSON) is printed and, where the environment variable
OUT names a folder, written there as gpu_check.md and gpu_check.json after every stage.
Exit status 0 when every stage passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script (bench/gpu_check.py): `bench` from the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

import seq2seq  # noqa: E402
from bench.common import (  # noqa: E402
    ROOT,
    Shape,
    matmul_ceiling,
    matmul_rate,
    process_tree,
    timed_updates,
)
from seq2seq.config import Config, load_config  # noqa: E402
from seq2seq.device import (  # noqa: E402
    compute_dtype,
    dist_backend,
    peak_memory_mb,
    resolve_device,
    setup_process,
    synchronize,
)
from seq2seq.errors import ConfigError, DataError  # noqa: E402
from seq2seq.rundir import RunDir  # noqa: E402

PAPER = ROOT / "configs" / "sutskever2014.yaml"
SRC = Path(seq2seq.__file__).resolve().parents[1]  # the seq2seq the child processes import
BEAM = 12
VALID_PAIRS = 256


@dataclass(frozen=True)
class Sizes:
    """What the check runs at on one kind of device."""

    paper: tuple[str, ...]  # overrides of the paper preset: training and decoding stages
    small: tuple[str, ...]  # overrides of the paper preset: resume and torchrun stages
    small_vocab: int  # the small model's words per side
    pairs: int  # synthetic training pairs
    lengths: tuple[int, int]  # shortest and longest source; targets are 0-4 words longer
    warmup: int  # untimed updates per precision
    steps: int  # timed updates per precision
    ceiling_seconds: float  # timing per matmul shape
    peak_size: int  # n of the n x n x n product timed for the peak
    precisions: tuple[str, ...]  # trained in, in this order
    decode_sentences: int
    resume_steps: int  # updates of the resume stage's runs
    kill_at: int  # the killed run is killed once it has logged this many updates
    ranks: int | None  # torchrun's processes; None: one per visible GPU
    ddp_steps: int


GPU = Sizes(
    paper=(), small=("model.embed_dim=256", "model.hidden_size=512", "model.num_layers=2"),
    small_vocab=8000, pairs=12_000, lengths=(20, 30), warmup=10, steps=40,
    ceiling_seconds=0.2, peak_size=8192, precisions=("fp32", "bf16", "fp16"),
    decode_sentences=128, resume_steps=300, kill_at=150, ranks=None, ddp_steps=30)
TINY = ("model.embed_dim=16", "model.hidden_size=32", "model.src_vocab=300",
        "model.tgt_vocab=200", "batching.batch_size=16", "train.threads=1")
CPU_TWIN = Sizes(
    paper=TINY, small=TINY, small_vocab=100, pairs=400, lengths=(3, 8), warmup=2, steps=5,
    ceiling_seconds=0.01, peak_size=256, precisions=("fp32", "bf16"), decode_sentences=16,
    resume_steps=100, kill_at=30, ranks=2, ddp_steps=4)
SIZES = {"cuda": GPU, "cpu": CPU_TWIN}
STAGE_SECONDS = {"train": 150, "decode": 150, "resume": 240, "torchrun": 150}


# ------------------------------------------------------------------------------ the data


def synthetic_corpus(folder: Path, pairs: int, types: tuple[int, int],
                     lengths: tuple[int, int], seed: int = 0) -> list[Path]:
    """Random parallel text in `folder`: `pairs` training and VALID_PAIRS validation pairs
    of the words w0, w1, ... (`types` of them per side), sources of `lengths` words, targets
    0-4 words longer (the paper's data: 25 English, 29 French words a sentence). The
    training text holds every word, so `prepare`'s vocabularies are `types` words (if it
    is long enough). Returns [train.en, train.fr, valid.en, valid.fr]."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n in (("train", pairs), ("valid", VALID_PAIRS)):
        src_lens = [rng.randint(*lengths) for _ in range(n)]
        tgt_lens = [length + rng.randint(0, 4) for length in src_lens]
        for lang, lens, count in (("en", src_lens, types[0]), ("fr", tgt_lens, types[1])):
            words = iter(_every_word(rng, count, sum(lens)))
            path = folder / f"{split}.{lang}"
            path.write_text("".join(" ".join(f"w{next(words)}" for _ in range(length)) + "\n"
                                    for length in lens))
            paths.append(path)
    return paths


def _every_word(rng: random.Random, types: int, count: int) -> list[int]:
    """`count` word ids: shuffled runs of all `types` ids, so each occurs if count >= types."""
    ids: list[int] = []
    while len(ids) < count:
        run = list(range(types))
        rng.shuffle(run)
        ids += run
    return ids[:count]


def prepare_data(work: Path, sizes: Sizes, device_name: str) -> tuple[Path, Path]:
    """The data directories of the paper-size stages (the preset's vocabulary sizes) and of
    the small model's stages (`sizes.small_vocab` words per side), from one synthetic
    corpus."""
    from seq2seq.prepare import prepare

    model = paper_config(sizes.paper, device_name).model
    text = synthetic_corpus(work / "text", sizes.pairs, (model.src_vocab, model.tgt_vocab),
                            sizes.lengths)
    paper, small = work / "data-paper", work / "data-small"
    prepare(*text, paper, src_vocab=model.src_vocab, tgt_vocab=model.tgt_vocab,
            tokenizer="space")
    prepare(*text, small, src_vocab=sizes.small_vocab, tgt_vocab=sizes.small_vocab,
            tokenizer="space")
    return paper, small


def paper_config(overrides: tuple[str, ...], device: str, *more: str) -> Config:
    return load_config(PAPER, [*overrides, f"train.device={device}", *more])


# ------------------------------------------------------------------------------ children


def train_child(device_name: str, sizes: Sizes, data: Path, precision: str) -> dict:
    """Warm-up and timed updates of the paper-size model, then the matmul ceiling of its
    average step and the device's peak, in this process."""
    cfg = paper_config(sizes.paper, device_name, f"train.precision={precision}")
    device = resolve_device(device_name)
    setup_process("train", device, cfg.train.threads)  # as `seq2seq train` does
    trainer, src, tgt, seconds = timed_updates(cfg, data, sizes.warmup, sizes.steps)
    shape = Shape.from_config(cfg.model, len(trainer.data.tgt_vocab))
    model_gflops = shape.train_flops(src, tgt) / seconds / 1e9
    dtype = compute_dtype(trainer.precision)
    ceiling = matmul_ceiling(shape, cfg.batching.batch_size, src / sizes.steps,
                             tgt / sizes.steps, dtype, device, sizes.ceiling_seconds)
    n = sizes.peak_size
    peak = matmul_rate(n, n, n, dtype, sizes.ceiling_seconds, device)
    return {"precision": trainer.precision, "steps": sizes.steps,
            "tf32_matmuls": device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
            "tgt_tok_s": round(tgt / seconds), "src_tgt_tok_s": round((src + tgt) / seconds),
            "ms_per_step": round(1000 * seconds / sizes.steps, 2),
            "model_gflops": round(model_gflops, 1), "ceiling_gflops": round(ceiling["gflops"], 1),
            "peak_gflops": round(peak, 1), "mfu": round(model_gflops / ceiling["gflops"], 3),
            "mfu_of_peak": round(model_gflops / peak, 3),
            "peak_memory_mb": round(peak_memory_mb(device)),
            "vocab": [len(trainer.data.src_vocab), len(trainer.data.tgt_vocab)],
            "ceiling_rates_gflops": ceiling["rates"]}


def decode_child(device_name: str, sizes: Sizes, data_dir: Path) -> dict:
    """Beam-12 translation of the first validation sentences by an untrained paper-size
    model, in fp32 and bf16 (one warm-up batch first)."""
    from seq2seq.data import DataDir
    from seq2seq.model import Seq2Seq
    from seq2seq.translator import Translator

    cfg = paper_config(sizes.paper, device_name)
    device = resolve_device(device_name)
    setup_process("decode", device, cfg.train.threads)
    data = DataDir(data_dir)
    sources, _ = data.valid_text(sizes.decode_sentences)
    runs = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Seq2Seq(len(data.src_vocab), len(data.tgt_vocab), cfg.model,
                        data.source_order(cfg.model.reverse_source)).to(device).eval()
        translator = Translator([model], data.src_vocab, data.tgt_vocab, data.tokenizer("src"),
                                data.tokenizer("tgt"), data.max_len, precision)
        translator.translate(sources[:8], beam=BEAM)
        synchronize(device)
        start = time.perf_counter()
        out = translator.translate(sources, beam=BEAM)
        synchronize(device)
        seconds = time.perf_counter() - start
        runs.append({"precision": translator.precision, "sentences": len(sources),
                     "sent_s": round(len(sources) / seconds, 2),
                     "tok_s": round(sum(len(t.text.split()) for t in out) / seconds)})
        del model, translator
    return {"beam": BEAM, "runs": runs, "peak_memory_mb": round(peak_memory_mb(device))}


def torchrun_child(device_name: str, sizes: Sizes, data: Path, result: Path) -> None:
    """One rank of the torchrun stage: updates of the small model on this rank's share of
    each global batch, then a check that every rank holds rank 0's weights; rank 0 writes
    the record to `result`."""
    import torch.distributed as dist

    from seq2seq.train import Trainer

    cfg = paper_config(sizes.small, device_name, "train.precision=bf16")
    device = resolve_device(device_name)  # under torchrun: this rank's GPU
    setup_process("train", device, cfg.train.threads)
    # Joined at world size 1 too (`seq2seq.train.init_distributed` would not): the
    # replica check below then still runs through the backend.
    dist.init_process_group(backend=dist_backend(device))
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(cfg, data, run_dir)
            trainer.train_next()  # warm-up
            synchronize(device)
            tgt, start = 0, time.perf_counter()
            for _ in range(sizes.ddp_steps):
                tgt += trainer.train_next()["tgt_tokens"]  # the global batch's
            synchronize(device)
            seconds = time.perf_counter() - start
        same = True
        for p in trainer.model.parameters():
            rank0 = p.detach().clone()
            dist.broadcast(rank0, 0)
            same &= torch.equal(rank0, p.detach())
        flag = torch.tensor([int(same)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if dist.get_rank() == 0:
            result.write_text(json.dumps({
                "world": dist.get_world_size(), "backend": dist.get_backend(),
                "precision": trainer.precision, "steps": sizes.ddp_steps,
                "tgt_tok_s": round(tgt / seconds), "replicas_identical": bool(flag.item())}))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ stages


class Stages:
    """Runs the stages in child processes within the time left, and keeps their records."""

    def __init__(self, device_name: str, sizes: Sizes, work: Path, budget: float):
        self.device_name, self.sizes, self.work = device_name, sizes, work
        self.deadline = time.monotonic() + budget
        self.records: list[dict] = []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
        if device_name == "cpu":
            self.env["OMP_NUM_THREADS"] = "1"

    def seconds_left(self, stage: str) -> float:
        return min(STAGE_SECONDS[stage], self.deadline - time.monotonic())

    def child(self, stage: str, *args: str) -> dict:
        """Run this script's `--child stage args`; its last stdout line is its record."""
        out = run([sys.executable, __file__, "--child", stage, "--device", self.device_name,
                   *args], self.seconds_left(stage), self.env)
        return json.loads(out.strip().splitlines()[-1])

    def run(self, name: str, stage: str, fn) -> None:
        """Record `fn()` (a dict with "ok") as stage `name`, or its failure."""
        start = time.monotonic()
        if self.seconds_left(stage) < 10:
            record = {"ok": False, "error": "not run: the check's time was spent"}
        else:
            try:
                record = fn()
            except Exception as err:  # a failing stage is reported; the next still runs
                record = {"ok": False, "error": f"{type(err).__name__}: {err}"[-2000:]}
        record = {"stage": name, **record, "seconds": round(time.monotonic() - start, 1)}
        self.records.append(record)
        print(json.dumps(record), flush=True)

    def train(self, data: Path, precision: str) -> dict:
        record = self.child("train", "--data", str(data), "--precision", precision)
        return {"ok": record["tgt_tok_s"] > 0 and record["mfu"] > 0, **record}

    def decode(self, data: Path) -> dict:
        record = self.child("decode", "--data", str(data))
        return {"ok": all(r["sent_s"] > 0 for r in record["runs"]), **record}

    def torchrun(self, data: Path) -> dict:
        ranks = self.sizes.ranks or torch.cuda.device_count()
        result = self.work / "torchrun.json"
        run([sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={ranks}", __file__, "--child", "torchrun", "--device",
             self.device_name, "--data", str(data), "--result", str(result)],
            self.seconds_left("torchrun"), self.env)
        record = json.loads(result.read_text())
        return {"ok": record["replicas_identical"] and record["world"] == ranks, **record}


def resume_stage(stages: Stages, data: Path) -> dict:
    """An uninterrupted `seq2seq train` run, and one killed (SIGKILL) once it has logged
    `kill_at` updates and run again: the same weights at the end, bit for bit?"""
    from seq2seq.checkpoint import load_checkpoint

    n = stages.sizes.resume_steps
    cfg = paper_config(stages.sizes.small, stages.device_name, f"optim.max_steps={n}",
                       "model.dropout=0.1",  # draws random numbers, which must resume too
                       "train.log_every=5", f"train.checkpoint_every={n // 10}",
                       f"train.valid_every={n}")
    config = stages.work / "resume.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def train(out: Path) -> list[str]:
        return [sys.executable, "-m", "seq2seq", "train", str(config), "--data", str(data),
                "--out", str(stages.work / out)]

    run(train(Path("whole")), stages.seconds_left("resume"), stages.env)
    killed = stages.work / "killed"
    proc = subprocess.Popen(train(killed), env=stages.env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + stages.seconds_left("resume")
    while _last_step(killed) < stages.sizes.kill_at and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    kill(proc)
    killed_at = _last_step(killed)
    resumed_from = load_checkpoint(killed / "last.pt")["step"]
    if not 0 < resumed_from < n:
        return {"ok": False, "error": f"not interrupted mid-run: last.pt at step "
                f"{resumed_from} of {n}"}
    run(train(killed), stages.seconds_left("resume"), stages.env)
    whole = load_checkpoint(stages.work / "whole" / "last.pt")
    same, diff = _compare(whole["model"], load_checkpoint(killed / "last.pt")["model"])
    record = {"ok": same, "steps": n, "killed_after_step": killed_at,
              "resumed_from_step": resumed_from, "bit_exact": same, "max_abs_diff": diff,
              "valid_nll": [_valid_nll(stages.work / r) for r in ("whole", "killed")]}
    if not same:  # nondeterminism, or a resume bug? Another uninterrupted run tells.
        run(train(Path("whole-again")), stages.seconds_left("resume"), stages.env)
        again = load_checkpoint(stages.work / "whole-again" / "last.pt")["model"]
        record["uninterrupted_runs_bit_exact"], record["uninterrupted_max_abs_diff"] = \
            _compare(whole["model"], again)
    return record


def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, float]:
    """Whether two state dicts are bit-identical, and their largest difference."""
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return same, diff


def _last_step(run_dir: Path) -> int:
    """The last step a running training has logged; 0 before its first record (or while
    a line is half written)."""
    try:
        return RunDir(run_dir).read_metrics()[-1]["step"]
    except DataError:
        return 0


def _valid_nll(run_dir: Path) -> float:
    return [r for r in RunDir(run_dir).read_metrics() if "valid_nll" in r][-1]["valid_nll"]


def run(argv: list[str], timeout: float, env: dict[str, str]) -> str:
    """Run `argv` in a session of its own; its stdout. RuntimeError with the end of its
    stderr if it fails; past `timeout` seconds, it and its children are killed."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        kill(proc)
        out, err = proc.communicate()
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(argv[1:5])} ...; "
                           f"stderr ends: {err[-1500:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {' '.join(argv[1:5])} ...; "
                           f"stderr ends: {err[-1500:]}")
    return out


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and its descendants at once, like a machine losing power (torchrun
    starts its workers in sessions of their own, so its process group is not enough)."""
    pids = process_tree(proc.pid)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # where /proc lists no children (gVisor?)
    for pid in reversed(pids):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


# ------------------------------------------------------------------------------ summary


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "device": device.type, "date": time.strftime("%Y-%m-%d")}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info.update(cpu=platform.machine(), threads=torch.get_num_threads())
    return info


def result_text(r: dict) -> str:
    """One stage's figures, in words."""
    if "error" in r:
        return r["error"].replace("\n", " ")[:300]
    if r["stage"].startswith("train"):
        return (f"{r['tgt_tok_s']:,} tgt tok/s ({r['ms_per_step']} ms/update), model "
                f"{r['model_gflops'] / 1000:.3g} TFLOP/s: MFU {r['mfu']:.0%} of the step's "
                f"matmul ceiling ({r['ceiling_gflops'] / 1000:.3g} TFLOP/s), "
                f"{r['mfu_of_peak']:.0%} of the peak ({r['peak_gflops'] / 1000:.3g}); "
                f"peak memory {r['peak_memory_mb']:,} MB")
    if r["stage"] == "decode":
        return "; ".join(f"{x['precision']} {x['sent_s']:,} sent/s, {x['tok_s']:,} tok/s"
                         for x in r["runs"]) + f" ({r['runs'][0]['sentences']} sentences)"
    if r["stage"] == "resume":
        return (f"killed after update {r['killed_after_step']}, resumed from "
                f"{r['resumed_from_step']} to {r['steps']}: weights "
                + ("bit-identical" if r["bit_exact"] else
                   f"differ by up to {r['max_abs_diff']:.3g} (two uninterrupted runs: "
                   f"{r['uninterrupted_max_abs_diff']:.3g})"))
    return (f"world size {r['world']} ({r['backend']}, {r['precision']}): {r['tgt_tok_s']:,} "
            f"tgt tok/s over {r['steps']} updates; replicas "
            + ("identical" if r["replicas_identical"] else "DIFFER"))


def summary(env: dict, records: list[dict]) -> str:
    where = (f"{env['gpus']} x {env['gpu']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}"
             if env["device"] == "cuda" else f"CPU twin ({env['cpu']})")
    lines = [f"## GPU check, {env['date']}: {where}, torch {env['torch']}", "",
             "`PYTHONPATH=src python3 bench/gpu_check.py"
             + (" --device cpu`" if env["device"] == "cpu" else "`"), "",
             "| stage | passed | seconds | result |", "|---|---|---:|---|"]
    lines += [f"| {r['stage']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | "
              f"{result_text(r)} |" for r in records]
    return "\n".join(lines) + "\n"


def write(env: dict, records: list[dict]) -> str:
    """The summary; also into $OUT/gpu_check.{md,json} if OUT is set."""
    text = summary(env, records)
    if out := os.environ.get("OUT"):
        Path(out, "gpu_check.md").write_text(text)
        Path(out, "gpu_check.json").write_text(
            json.dumps({"environment": env, "stages": records}, indent=1) + "\n")
    return text


def check(device_name: str, budget: float) -> int:
    device = resolve_device(device_name)
    sizes = SIZES[device.type]
    env = environment(device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        stages = Stages(device_name, sizes, Path(tmp), budget)
        paper, small = prepare_data(Path(tmp), sizes, device_name)
        train = [(f"train {p}", "train", partial(stages.train, paper, p))
                 for p in sizes.precisions]
        plan = [*train[:2], ("decode", "decode", partial(stages.decode, paper)),
                ("resume", "resume", partial(resume_stage, stages, small)),
                ("torchrun", "torchrun", partial(stages.torchrun, small)), *train[2:]]
        for name, stage, fn in plan:  # fp16, the least used, last
            stages.run(name, stage, fn)
            write(env, stages.records)
    print(write(env, stages.records))
    print(json.dumps({"environment": env, "stages": stages.records}))
    return 0 if all(r["ok"] for r in stages.records) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=sorted(SIZES), default="cuda",
                        help="cuda: the GPU check (default); cpu: its CPU twin")
    parser.add_argument("--budget", type=float, default=290.0,
                        help="seconds for all stages; a stage that cannot start is reported")
    parser.add_argument("--child", choices=["train", "decode", "torchrun"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = SIZES[args.device]
    if args.child == "train":
        print(json.dumps(train_child(args.device, sizes, args.data, args.precision)))
    elif args.child == "decode":
        print(json.dumps(decode_child(args.device, sizes, args.data)))
    elif args.child == "torchrun":
        torchrun_child(args.device, sizes, args.data, args.result)
    else:
        try:
            sys.exit(check(args.device, args.budget))
        except ConfigError as err:  # no GPU here
            sys.exit(f"gpu_check: {err} (its CPU twin: --device cpu)")


if __name__ == "__main__":
    main()
