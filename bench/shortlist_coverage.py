"""How much of the references a vocabulary shortlist keeps, and how many words it leaves.

For each (translations per source piece K, frequent target pieces N), over the test set in
batches of `--batch-size` consecutive sentences: the share of the references' target
pieces that are among their batch's candidates (`Shortlist.candidates`; a piece outside
can never be said), and the mean number of candidates per batch, against the target
vocabulary. No model, no timing: it chooses K and N before any decoding is measured
(`bench/decode_speed.py --shortlist`, `bench/peers.py` then give speed and BLEU).

    .venv/bin/python -m bench.shortlist_coverage --data work/tatoeba-data
    .venv/bin/python -m bench.shortlist_coverage --data D --translations 10 50 --frequent 500
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import CORPUS


def coverage(shortlist, sources: list[list[int]], refs: list[list[int]], k: int, n: int,
             batch_size: int) -> tuple[float, float]:
    """(share of the reference pieces among their batch's candidates, mean candidates per
    batch) with the first `k` translations of each row and the `n` most frequent pieces."""
    cut = type(shortlist)(shortlist.table[:, :k], shortlist.frequent[:n], shortlist.src_vocab,
                          shortlist.tgt_vocab)
    kept = total = candidates = batches = 0
    for start in range(0, len(sources), batch_size):
        ids = cut.candidates(sources[start:start + batch_size])
        pieces = torch.tensor([t for r in refs[start:start + batch_size] for t in r])
        kept += int(torch.isin(pieces, ids).sum())
        total += len(pieces)
        candidates += len(ids)
        batches += 1
    return kept / total, candidates / batches


def main() -> None:
    from seq2seq.data import DataDir
    from seq2seq.shortlist import Shortlist, build_shortlist
    from seq2seq.text import read_pairs
    from seq2seq.vocab import EOS_ID

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a prepared data directory")
    parser.add_argument("--shortlist", type=Path,
                        help="its shortlist, with at least max(--translations) per row "
                             "(default: built here, with max(--translations))")
    parser.add_argument("--translations", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--frequent", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--src", type=Path, default=CORPUS / "test.en")
    parser.add_argument("--ref", type=Path, default=CORPUS / "test.fr")
    args = parser.parse_args()
    data = DataDir(args.data)
    if args.shortlist:
        shortlist = Shortlist.load(args.shortlist, data.src_vocab, data.tgt_vocab)
    else:
        shortlist = build_shortlist(args.data, max(args.translations), max(args.frequent))
    tokenizers = data.tokenizer("src"), data.tokenizer("tgt")
    pairs = list(read_pairs(args.src, args.ref))
    sources = [data.src_vocab.encode(tokenizers[0].tokenize(s)) for s, _ in pairs]
    refs = [data.tgt_vocab.encode(tokenizers[1].tokenize(r)) + [EOS_ID] for _, r in pairs]
    print(f"{args.data}: {len(pairs):,} test pairs, batches of {args.batch_size}, target "
          f"vocabulary {len(data.tgt_vocab):,}\n\n| K | N | reference pieces kept | "
          "candidates per batch |\n|---:|---:|---:|---:|")
    for k in args.translations:
        for n in args.frequent:
            kept, size = coverage(shortlist, sources, refs, k, n, args.batch_size)
            print(f"| {k} | {n} | {kept:.2%} | {size:,.0f} ({size / len(data.tgt_vocab):.0%}) |")


if __name__ == "__main__":
    main()
