#!/usr/bin/env bash
# Checkpoint averaging on the demo (README, "Validation BLEU, early stopping, checkpoint
# averaging"): the demo's recipe (configs/tatoeba-cpu.yaml, seed 1, one thread) trained in
# stretches with optim.max_steps, so that last.pt is kept every 250 updates from 6,589 to
# the end (8,589); a run trained in stretches ends as one trained without stopping. Then the
# means of the last 2 / 3 / 5 / 9 and the last checkpoint alone, scored on the validation
# split (and the test split) with the demo's decoding. Resumes where it stopped.
#   bash experiments/demo_averaging.sh [WORK]   (default work/demo-avg; needs `make install`
#   and the demo's data: `make work/tatoeba-data/meta.json`)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work/demo-avg}; S=.venv/bin/seq2seq; C=$W/ckpt; CORPUS=data/tatoeba-en-fr
train() { $S train configs/tatoeba-cpu.yaml --data work/tatoeba-data --out "$W/run" train.threads=1 "$@"; }
mkdir -p "$C" "$W/avg"
for s in 6589 6839 7089 7339 7589 7839 8089 8339; do
    [ -f "$C/step-$s.pt" ] || { train optim.max_steps=$s; cp "$W/run/last.pt" "$C/step-$s.pt"; }
done
[ -f "$C/step-8589.pt" ] || { train; cp "$W/run/last.pt" "$C/step-8589.pt"; }
ckpts=( $(ls "$C"/step-*.pt | sort) )
for n in 2 3 5 9; do
    args=(); for f in "${ckpts[@]: -$n}"; do args+=(--model "$f"); done
    [ -f "$W/avg/last$n.pt" ] || $S average "${args[@]}" --out "$W/avg/last$n.pt"
done
for split in valid test; do
    for m in "$C/step-8589.pt" "$W"/avg/last{2,3,5,9}.pt; do
        bleu=$($S evaluate --model "$m" --src $CORPUS/$split.en --ref $CORPUS/$split.fr --beam 12 \
               --length-penalty 1.0 --precision bf16 --json --no-progress 2>/dev/null \
               | .venv/bin/python -c "import json, sys; print(round(json.load(sys.stdin)['bleu'], 2))")
        echo "$split $m BLEU $bleu"
    done
done
