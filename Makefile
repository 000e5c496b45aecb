# Everything runs inside .venv, created from nothing by the first target that needs it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU wheel of torch must come first: an unpinned torch pulls several GB of CUDA.
TORCH_SPEC ?= torch==2.13.0
# Where the CPU wheel is not on a local wheel path, e.g.: make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=

# Python 3.10 (the oldest declared in pyproject.toml), in its own venv: make test-py310 PYTHON310=...
PYTHON310 ?= python3.10
VENV310 := .venv310
PY310 := $(VENV310)/bin/python
# The tests whose arithmetic depends on the CPU's product kernels (bfloat16/float32 passes, certificates).
SOLVER_TESTS ?= tests/core/test_lap_sparse.py tests/core/test_lap.py tests/core/test_match.py

.PHONY: demo lint test test-avx2 test-py310 lab install warmup clean bench notebooks gemma3 gemma3-experiments gemma3-flow

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	# compile the solvers' numba kernels now, not in the first match() of a notebook
	$(PY) -m saematch_nb warmup
	touch $(STAMP)

install: $(STAMP)

# again after a numba upgrade or on another CPU model (numba's cache is per CPU and version)
warmup: $(STAMP)
	$(PY) -m saematch_nb warmup

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m saematch_nb.demo --out out

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

# pyflakes, one statement a line, whitespace, lines <= 120 ([tool.ruff] in pyproject.toml); no formatter
lint: $(STAMP)
	$(VENV)/bin/ruff check saematch_nb tests benchmarks scripts
	# no block of 6+ lines copied inside the package (issue #24: the solvers' loops written once)
	$(PY) scripts/repeated_blocks.py --min-lines 6

# The solver's tests with oneDNN limited to AVX2: an AMD-like path (no AMX, no native bfloat16) on any x86-64.
test-avx2: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider $(SOLVER_TESTS)

$(VENV310)/.installed: pyproject.toml
	test -x $(PY310) || $(PYTHON310) -m venv $(VENV310)
	$(PY310) -m pip install -q --upgrade pip
	$(PY310) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY310) -m pip install -q -e ".[dev]"
	$(PY310) -m saematch_nb warmup
	touch $@

# core, sources and analysis (numerics, cache, loaders, steering) under Python 3.10
test-py310: $(VENV310)/.installed
	HF_HUB_OFFLINE=1 $(PY310) -m pytest -q -p no:cacheprovider tests/core tests/sources tests/analysis

notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_notebooks.py

lab: $(STAMP)
	$(PIP) install -q jupyterlab
	$(VENV)/bin/jupyter lab notebooks/

# Gemma 3 270M (offline, from PyPI) with an SAE on each of its 18 layers: docs/GEMMA3.md. The SAEs ship
# in saematch_nb/gemma3/assets; this rebuilds them (resumable: rerun after an interruption).
gemma3: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) scripts/build_gemma3.py --out .gemma3_build --assets saematch_nb/gemma3/assets $(GEMMA3_ARGS)

# The paper's experiments on it: tables and figures in docs/gemma3/ (about an hour on 2 cores)
gemma3-experiments: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gemma3_experiments.py

# Feature Flow on it (issue #21): residual, MLP-output and attention-output SAEs of layers 4-10 (not
# shipped: ~45 min on 2 cores), then the data, deactivation and steering checks into docs/gemma3/flow/
gemma3-flow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) scripts/build_gemma3.py --out .gemma3_flow_build --flow 5-10 --init data --tokens 500000 --batch 512 $(GEMMA3_ARGS)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gemma3_flow.py --build .gemma3_flow_build --out docs/gemma3/flow

bench: $(STAMP)
	$(PY) benchmarks/bench_matching.py

clean:
	rm -rf $(VENV) $(VENV310) out .saematch_cache .gemma3_build .gemma3_flow_build
