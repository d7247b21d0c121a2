"""The model of Sutskever et al. (2014): a deep LSTM encoder, a separate deep LSTM decoder.

The encoder reads the (reversed) source; its final (h, c) of every layer is the sentence
representation and the decoder's initial state. The decoder is a conditional language
model with a softmax over the whole target vocabulary. No attention. Every parameter is
drawn uniformly from [-0.08, 0.08].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from seq2seq import bf16
from seq2seq.config import ModelConfig
from seq2seq.data import SourceOrder
from seq2seq.vocab import PAD_ID

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, batch, hidden_size)


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, state: State | None = None,
             bf16_kernels: bool = True) -> tuple[torch.Tensor, State]:
    """`lstm(x, state)`; in bf16 training on the CPU, by `seq2seq.bf16`'s LSTM unless
    `bf16_kernels` is off (`Seq2Seq.use_bf16_kernels`)."""
    if bf16_kernels and bf16.lstm_applies(lstm, x):
        return bf16.lstm_forward(lstm, x, state)
    return lstm(x, state)


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_size, cfg.num_layers,
                            batch_first=True, dropout=cfg.dropout)
        self.bf16_kernels = True

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        """src (batch, src_len), src_lens (batch,) -> final (h, c) at each true length.

        Bucketing makes most batches rectangular: one `nn.LSTM` call. A batch of several
        lengths is read in segments between consecutive lengths, longest sentences first:
        the sentences still going read the next segment from their state at its start, and
        those that end there keep their state. Every segment is one rectangular call of the
        fused LSTM kernel (oneDNN, cuDNN), and no padding is read. (A packed sequence would
        fall back to a per-time-step loop on the CPU.)
        """
        x = self.dropout(self.embed(src))
        lens = src_lens.cpu()
        if bool((lens == src.shape[1]).all()):
            _, state = run_lstm(self.lstm, x, bf16_kernels=self.bf16_kernels)
            return state
        order = torch.argsort(lens, descending=True, stable=True)
        x, lens = x[order.to(x.device)], lens[order]
        finals: list[State] = []  # shortest sentences first
        state, start = None, 0
        for end in sorted(set(lens.tolist())):
            going = int((lens >= end).sum())  # a prefix of the rows: they are sorted
            if state is not None:  # cuDNN needs contiguous states
                state = (state[0][:, :going].contiguous(), state[1][:, :going].contiguous())
            _, state = run_lstm(self.lstm, x[:going, start:end], state, self.bf16_kernels)
            longer = int((lens > end).sum())
            finals.append((state[0][:, longer:going], state[1][:, longer:going]))
            start = end
        unsort = torch.argsort(order).to(x.device)
        h = torch.cat([f[0] for f in reversed(finals)], 1)[:, unsort]
        c = torch.cat([f[1] for f in reversed(finals)], 1)[:, unsort]
        return h, c


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_size, cfg.num_layers,
                            batch_first=True, dropout=cfg.dropout)
        self.output = nn.Linear(cfg.hidden_size, vocab_size)
        self.bf16_kernels = True

    def forward(self, tgt_in: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tgt_in (batch, tgt_len) -> top-layer outputs (batch, tgt_len, hidden), new state."""
        out, state = run_lstm(self.lstm, self.dropout(self.embed(tgt_in)), state,
                              self.bf16_kernels)
        return self.dropout(out), state


class Seq2Seq(nn.Module):
    """Encoder + decoder. `source_order` is the order the encoder reads sources in
    (`cfg.reverse_source` with the source vocabulary's word starts), kept with the model so
    that every path feeds it sources as training did; without it every token is a word."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, cfg: ModelConfig,
                 source_order: SourceOrder | None = None):
        super().__init__()
        self.cfg = cfg
        self.source_order = source_order or SourceOrder(cfg.reverse_source)
        self.encoder = Encoder(src_vocab_size, cfg)
        self.decoder = Decoder(tgt_vocab_size, cfg)
        self.bf16_kernels = True
        for p in self.parameters():
            nn.init.uniform_(p, -cfg.init_range, cfg.init_range)

    def use_bf16_kernels(self, enabled: bool) -> None:
        """Whether bf16 training on the CPU runs the LSTMs and the loss's softmax gradient
        by `seq2seq.bf16`'s kernels (the default) or by PyTorch (`train.bf16_kernels`)."""
        self.bf16_kernels = self.encoder.bf16_kernels = self.decoder.bf16_kernels = enabled

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> State:
        return self.encoder(src, src_lens)

    def decode_hidden(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (n,) -> the decoder's top-layer output (n, hidden), new state."""
        out, state = self.decoder(tokens[:, None], state)
        return out[:, 0], state

    def log_probs(self, hidden: torch.Tensor,
                  output: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
        """Top-layer outputs (..., hidden) -> float32 log-probabilities (..., tgt_vocab):
        over the words of `output`, an output layer of some words only (a shortlist's,
        `seq2seq.shortlist.OutputRows`), if given."""
        # Straight from the logits' dtype to float32: one fused pass, no float32 copy of
        # the logits first.
        logits = (self.decoder.output if output is None else output)(hidden)
        return torch.log_softmax(logits, dim=-1, dtype=torch.float32)

    def forward(
        self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor,
        tgt_out: torch.Tensor, chunk: int = 4096, label_smoothing: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, NLL) summed over all target tokens of the batch: two scalars.

        The loss is the NLL unless `label_smoothing` eps > 0 (see `chunked_loss`); only the
        loss carries a gradient. Padding positions are dropped before the output layer, so
        they cost nothing.
        """
        hidden, _ = self.decoder(tgt_in, self.encode(src, src_lens))
        mask = tgt_out != PAD_ID
        out = self.decoder.output
        return chunked_loss(hidden[mask], out.weight, out.bias, tgt_out[mask], chunk,
                            label_smoothing, self.bf16_kernels)

    def token_nll(
        self, src: torch.Tensor, src_lens: torch.Tensor, tgt_in: torch.Tensor,
        tgt_out: torch.Tensor, block_floats: int = 1 << 22,
    ) -> torch.Tensor:
        """-log p(y_t | y_<t, S) of every target token and </s>: (batch, tgt_len), 0 at padding.

        Summed over a row, it is the sentence's -log p(T|S). As in training's loss
        (`chunked_loss`), padding is dropped before the output layer and the log-softmax is
        taken a chunk of positions at a time, each chunk's block at most `block_floats`
        (16 MB of float32): never a (batch, tgt_len, vocab) tensor. The output layer is
        called as a module (`log_probs`), so an int8-quantized one works too.
        """
        hidden, _ = self.decoder(tgt_in, self.encode(src, src_lens))
        mask = tgt_out != PAD_ID
        rows, targets = hidden[mask], tgt_out[mask]  # (n, hidden), (n,)
        chunk = max(1, block_floats // self.decoder.output.out_features)
        picked = torch.empty(len(rows), dtype=torch.float32, device=rows.device)
        for s in range(0, len(rows), chunk):
            logp = self.log_probs(rows[s:s + chunk])  # (chunk, vocab)
            picked[s:s + chunk] = logp.gather(1, targets[s:s + chunk, None]).squeeze(1)
        nll = torch.zeros(tgt_out.shape, dtype=torch.float32, device=rows.device)
        nll[mask] = -picked
        return nll


def parameter_shapes(src_vocab_size: int, tgt_vocab_size: int, cfg: ModelConfig
                     ) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of `Seq2Seq(src_vocab_size, tgt_vocab_size, cfg)`'s
    state_dict, without building it: a checkpoint's weights are checked against its config
    and vocabularies before any model is allocated (`checkpoint.load_bundle`)."""
    e, h = cfg.embed_dim, cfg.hidden_size
    shapes = {}
    for side, vocab in (("encoder", src_vocab_size), ("decoder", tgt_vocab_size)):
        shapes[f"{side}.embed.weight"] = (vocab, e)
        for k in range(cfg.num_layers):  # nn.LSTM's names: gates i, f, g, o stacked (4h)
            shapes[f"{side}.lstm.weight_ih_l{k}"] = (4 * h, e if k == 0 else h)
            shapes[f"{side}.lstm.weight_hh_l{k}"] = (4 * h, h)
            shapes[f"{side}.lstm.bias_ih_l{k}"] = shapes[f"{side}.lstm.bias_hh_l{k}"] = (4 * h,)
    shapes["decoder.output.weight"] = (tgt_vocab_size, h)
    shapes["decoder.output.bias"] = (tgt_vocab_size,)
    return shapes


def chunked_loss(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
    chunk: int, label_smoothing: float = 0.0, bf16_kernels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, NLL) of the output layer, log-softmax and targets, `chunk` rows at a time.

    hidden (n, hidden), weight (vocab, hidden), bias (vocab,), targets (n,). The NLL is
    sum_i -log p_i[targets_i], with p_i = softmax(hidden_i @ weight.T + bias). With label
    smoothing eps, the loss is the cross-entropy against (1 - eps) x onehot + eps / vocab:

        loss = sum_i (1 - eps) x -log p_i[targets_i] + eps x mean_v -log p_i[v]

    Only one (chunk, vocab) block of logits exists at a time, in training as well: the
    gradients are computed chunk by chunk during the forward pass (`_ChunkedLoss`). In bf16
    training on the CPU the softmax gradient is `seq2seq.bf16`'s kernel unless
    `bf16_kernels` is off.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        kernel = bf16_kernels and bf16.applies(hidden)
        return _ChunkedLoss.apply(hidden, weight, bias, targets, chunk, label_smoothing,
                                  kernel)
    nll = smooth = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for s in range(0, len(hidden), chunk):
        logits = torch.addmm(bias, hidden[s:s + chunk], weight.t()).float()
        target_logits = logits.gather(1, targets[s:s + chunk, None]).squeeze(1)
        lse = torch.logsumexp(logits, 1)
        nll = nll + (lse - target_logits).sum()
        if label_smoothing:
            smooth = smooth + (lse - logits.mean(1)).sum()
    if not label_smoothing:
        return nll, nll
    return (1 - label_smoothing) * nll + label_smoothing * smooth, nll


# The float32 softmax block that the loss forms, reads and turns into its gradient at once:
# 1M floats (4 MB, within L3 between those passes). The chunk itself stays in the
# products' dtype, so in bf16 its working set is 2 bytes a logit, not 6 (bench/SCALING.md,
# 2026-12-07: the paper's bf16 step 5.35 -> 3.45 GB).
SOFTMAX_BLOCK_FLOATS = 1 << 20


class _ChunkedLoss(torch.autograd.Function):
    """Output layer + log-softmax + (smoothed) cross-entropy whose backward is a product.

    d(loss)/d(logits) = softmax(logits) - q, with q the target distribution (onehot, or
    smoothed), so each chunk's gradients w.r.t. hidden, weight and bias are formed as soon
    as its softmax is known, and the chunk's logits are freed. Memory: O(n x hidden +
    vocab x hidden), never O(n x vocab): one (chunk, vocab) block in the products' dtype
    (the logits, overwritten by their gradient) and a float32 softmax of a few rows. The
    NLL comes along without a gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, eps, kernel):
        # One cast of the output layer per step (to bf16 under autocast, else a no-op).
        w, b = weight.to(hidden.dtype), bias.to(hidden.dtype)
        nll = torch.zeros((), dtype=torch.float32, device=hidden.device)
        smooth = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if eps:  # for the rows' mean logit: mean_v (h . w_v + b_v) = (h . sum_v w_v + sum b) / V
            w_sum, b_sum = weight.float().sum(0), bias.float().sum()
        grad_hidden = torch.empty_like(hidden)
        grad_weight = None
        grad_bias = torch.zeros(w.shape[0], dtype=torch.float32, device=hidden.device)
        for s in range(0, len(hidden), chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            # The chunk's logits in one product, in its dtype, then overwritten by d loss /
            # d logits = softmax - q, q = (1 - eps) onehot + eps / vocab. The constant
            # eps / vocab is not subtracted there (a pass over the whole chunk) but from the
            # three products below, where it is a rank-one term.
            g = torch.addmm(b, h, w.t())
            if kernel and g.dtype == torch.bfloat16:
                target_logp = bf16.softmax_gradient(g, t, 1.0 - eps, grad_bias)
            else:
                target_logp = softmax_gradient(g, t, 1.0 - eps, grad_bias)
            nll -= target_logp.sum()
            if eps:
                smooth += _smoothing(h, t, target_logp, weight, bias, w_sum, b_sum)
            gh = grad_hidden[s:s + chunk]
            torch.mm(g, w, out=gh)
            gw = g.t() @ h
            if eps:
                c = eps / g.shape[1]
                gh -= c * w.sum(0)
                gw -= c * h.sum(0)
                grad_bias -= c * len(t)
            if grad_weight is None:
                grad_weight = gw.float()
            else:
                grad_weight += gw
        if grad_weight is None:  # no target tokens at all
            grad_weight = torch.zeros_like(weight)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype)
        loss = (1 - eps) * nll + eps * smooth if eps else nll.clone()
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_nll):
        # Scaled in place: the gradients were formed for this one backward pass only.
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)),
                grad_weight.mul_(grad_loss).to(ctx.dtypes[0]),
                grad_bias.mul_(grad_loss).to(ctx.dtypes[1]), None, None, None, None)


def softmax_gradient(logits: torch.Tensor, targets: torch.Tensor, keep: float,
                     grad_bias: torch.Tensor) -> torch.Tensor:
    """In place: logits (rows, vocab) -> d loss / d logits = softmax - keep x
    onehot(targets) (keep = 1 - label smoothing's eps), in their dtype; that gradient summed
    over the rows is added to grad_bias (vocab) float32. Returns the targets'
    log-probabilities (rows) float32. A cache-sized block of rows at a time: its float32
    log-softmax straight from the logits' dtype (as `log_probs`), exp_ in place, then the
    copy back over the logits. (`seq2seq.bf16.softmax_gradient` does the same in one pass.)
    """
    rows_per_block = max(1, SOFTMAX_BLOCK_FLOATS // logits.shape[1])
    target_logp = torch.empty(len(targets), dtype=torch.float32, device=logits.device)
    for r in range(0, len(targets), rows_per_block):
        block, tb = logits[r:r + rows_per_block], targets[r:r + rows_per_block]
        rows = torch.arange(len(tb), device=tb.device)
        probs = torch.log_softmax(block, 1, dtype=torch.float32)
        target_logp[r:r + rows_per_block] = probs[rows, tb]
        probs.exp_()
        probs[rows, tb] -= keep
        grad_bias += probs.sum(0)
        block.copy_(probs)
    return target_logp


def _smoothing(hidden: torch.Tensor, targets: torch.Tensor, target_logp: torch.Tensor,
               weight: torch.Tensor, bias: torch.Tensor, w_sum: torch.Tensor,
               b_sum: torch.Tensor) -> torch.Tensor:
    """sum over rows of -mean_v log p_v = logsumexp - mean logit, both from O(rows x hidden)
    work (elementwise, so autocast leaves them in float32), not another pass over the
    logits: logsumexp = target logit - log p(target)."""
    h = hidden.float()
    target_logit = (h * weight[targets].float()).sum(1) + bias[targets].float()
    mean_logit = ((h * w_sum).sum(1) + b_sum) / len(weight)
    return (target_logit - target_logp - mean_logit).sum()


def count_parameters(model: nn.Module | dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Parameter counts: total, recurrent (LSTM) of the encoder and decoder, embeddings,
    output; of a model, or of its `parameter_shapes` (`train --dry-run`: nothing built)."""
    shapes = model if isinstance(model, dict) else \
        {name: tuple(p.shape) for name, p in model.named_parameters()}
    n = lambda prefix: sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))  # noqa: E731
    return {
        "total": n(""), "encoder_lstm": n("encoder.lstm."), "decoder_lstm": n("decoder.lstm."),
        "src_embed": n("encoder.embed."), "tgt_embed": n("decoder.embed."),
        "output": n("decoder.output."),
    }
