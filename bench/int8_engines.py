"""Which engine runs int8 decoding faster: PyTorch's dynamic quantization or ONNX Runtime?

Times one decoder step of the benchmark model (bench/benchmark.yaml: 2 x 512 LSTMs,
embeddings 256, 10,004 target words): embedding lookup, the 2-layer LSTM for one time
step, the output layer and the log-softmax, at 64 rows (greedy's batch) and 768 rows
(beam 12 x 64 sentences), in four ways:

- torch fp32: the model as trained;
- torch int8: `seq2seq.device.quantize_int8`, what `--precision int8` runs
  (int8 weights with a scale per row, activations quantized per call: fbgemm products);
- ORT fp32: the same step exported to ONNX (`torch.onnx.export`) and run by ONNX Runtime;
- ORT int8: that graph through `onnxruntime.quantization.quantize_dynamic` (int8 weights
  with a scale per output row, as ours; `DynamicQuantizeLSTM` and `MatMulInteger`).

Weights: a checkpoint (`--model`) or the benchmark shapes at random (speed does not depend
on the values). Each way's outputs are checked against torch fp32. ONNX Runtime is not a
dependency of seq2seq; this script needs `pip install onnxruntime onnx`.

    .venv/bin/python -m bench.int8_engines --threads 2 --repeats 30
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from bench.common import BENCH_CONFIG, median_ms


class DecoderStep(nn.Module):
    """tokens (n,), h and c (layers, n, hidden) -> log-probabilities (n, vocab), h, c: the
    model's own decoding step (`decode_hidden`, `log_probs`), as one module to export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, h, c):
        out, (h, c) = self.model.decode_hidden(tokens, (h, c))
        return self.model.log_probs(out), h, c


def load_model(path: Path | None):
    from seq2seq.checkpoint import load_bundle
    from seq2seq.config import load_config
    from seq2seq.model import Seq2Seq

    if path is not None:
        return load_bundle(path, torch.device("cpu")).model.eval()
    cfg = load_config(BENCH_CONFIG).model
    return Seq2Seq(cfg.src_vocab + 4, cfg.tgt_vocab + 4, cfg).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: random weights)")
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 768])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from seq2seq.device import quantize_int8, setup_process

    setup_process("decode", torch.device("cpu"), args.threads)
    model = load_model(args.model)
    step = DecoderStep(model).eval()
    q_step = DecoderStep(quantize_int8(copy.deepcopy(model))).eval()
    layers, hidden = model.cfg.num_layers, model.cfg.hidden_size
    vocab = model.decoder.output.out_features

    tmp = Path(tempfile.mkdtemp())
    fp32_onnx, int8_onnx = tmp / "step.onnx", tmp / "step.int8.onnx"
    n0 = args.rows[0]
    example = (torch.randint(4, vocab, (n0,)), torch.zeros(layers, n0, hidden),
               torch.zeros(layers, n0, hidden))
    torch.onnx.export(step, example, fp32_onnx, input_names=["tokens", "h", "c"],
                      output_names=["logp", "h_out", "c_out"], dynamo=False,
                      dynamic_axes={"tokens": {0: "n"}, "h": {1: "n"}, "c": {1: "n"},
                                    "logp": {0: "n"}, "h_out": {1: "n"}, "c_out": {1: "n"}})
    # A scale per output row, as ours (ORT's default is one per matrix).
    quantize_dynamic(fp32_onnx, int8_onnx, weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
                for name, path in (("ORT fp32", fp32_onnx), ("ORT int8", int8_onnx))}

    gen = torch.Generator().manual_seed(0)
    for rows in args.rows:
        tokens = torch.randint(4, vocab, (rows,), generator=gen)
        h = torch.rand(layers, rows, hidden, generator=gen) * 0.5 - 0.25
        c = torch.rand(layers, rows, hidden, generator=gen) - 0.5
        with torch.inference_mode():
            ref = step(tokens, h, c)[0]
            ways = {"torch fp32": functools.partial(torch_step, step, tokens, h, c),
                    "torch int8": functools.partial(torch_step, q_step, tokens, h, c)}
            feed = {"tokens": tokens.numpy(), "h": h.numpy(), "c": c.numpy()}
            for name, session in sessions.items():
                ways[name] = functools.partial(ort_step, session, feed)
            for name, fn in ways.items():
                out = fn()
                agree = (out.argmax(1) == ref.argmax(1)).float().mean()
                print(json.dumps({
                    "engine": name, "rows": rows, "threads": args.threads,
                    "ms": round(median_ms(fn, args.repeats), 2),
                    "max_abs_diff_logp": round(float((out - ref).abs().max()), 4),
                    "argmax_agree": round(float(agree), 4),
                }), flush=True)


def torch_step(step, tokens, h, c):
    return step(tokens, h, c)[0]


def ort_step(session, feed):
    return torch.from_numpy(session.run(["logp"], feed)[0])

if __name__ == "__main__":
    main()
