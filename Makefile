SHELL := /bin/bash
# Everything runs from a project-local virtualenv that `make` creates on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DEMO_DATA := work/tatoeba-data
DEMO_RUN  := runs/tatoeba-cpu
CORPUS    := data/tatoeba-en-fr

.PHONY: install demo test test-fast lint clean paper paper-quick bench bench-peers gpu-check

install: $(STAMP)

# torch is pinned to the 2.13.0 CPU build first, so nothing can pull a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Prepare the bundled corpus, train tatoeba-cpu (resumes if interrupted), then report
# test BLEU with beam 12 and show a few translations. The length penalty and bf16 decoding
# were chosen on the validation split (README, first section).
DEMO_DECODE := --length-penalty 1.0 --precision bf16
demo: $(STAMP) $(DEMO_DATA)/meta.json
	$(BIN)/seq2seq train configs/tatoeba-cpu.yaml --data $(DEMO_DATA) --out $(DEMO_RUN)
	$(BIN)/seq2seq evaluate --model $(DEMO_RUN)/best.pt --src $(CORPUS)/test.en \
		--ref $(CORPUS)/test.fr --beam 12 $(DEMO_DECODE) --hyps $(DEMO_RUN)/test.hyp.fr
	@echo "--- a few test sentences, source | ours | reference"
	@head -8 $(CORPUS)/test.en | paste -d '|' - <(head -8 $(DEMO_RUN)/test.hyp.fr) \
		<(head -8 $(CORPUS)/test.fr) | sed 's/|/  |  /g'

$(DEMO_DATA)/meta.json: $(STAMP)
	$(BIN)/seq2seq prepare --train-src $(CORPUS)/train.en.gz --train-tgt $(CORPUS)/train.fr.gz \
		--valid-src $(CORPUS)/valid.en --valid-tgt $(CORPUS)/valid.fr --out $(DEMO_DATA) \
		--tokenizer sentencepiece --src-vocab 8000 --tgt-vocab 8000 --workers 2 --force

# The paper's claims tested as a reviewer would -> experiments/RESULTS.md: source reversal
# on Tatoeba (9 demo-sized models, ~3 h on 2 cores) and on the whole Hansard (4 models,
# ~11 CPU-hours), the statistics, Figure 2 and the synthetic controls; stopped, it resumes.
# paper-quick: every step at a tiny size, ~3 min (the test suite runs it too).
paper: $(STAMP)
	$(BIN)/python experiments/paper.py

paper-quick: $(STAMP)
	$(BIN)/python experiments/paper.py --quick

# Speed on the peers' benchmark configuration (bench/RESULTS.md): ours alone, then
# side by side with OpenNMT-py (installed into bench/.peers/ on first use; ~45 min).
bench: $(STAMP)
	$(BIN)/python -m bench.train_speed
	$(BIN)/python -m bench.peers

bench-peers: $(STAMP)
	$(BIN)/python -m bench.peers

# The GPU check (bench/gpu_check.py: training, beam 12, resume after a kill, torchrun),
# under five minutes on one GPU. It runs on the GPU machine's own python3 and CUDA torch,
# with no virtualenv: nothing is installed there. Its CPU twin is in the test suite.
gpu-check:
	PYTHONPATH=src $(PYTHON) bench/gpu_check.py

test: $(STAMP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench experiments

clean:
	rm -rf $(VENV) work runs
