# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; a plain `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test venv clean gpu-check gpu-transfer

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[train,export,serve,science,dev]'
	touch $@

demo: venv
	$(VENV)/bin/twin demo --out demo

# Import rules first (contracts in pyproject.toml), then the tests; benchmarks (`slow`) stay out.
test: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

# On a machine with a CUDA GPU and PyTorch, with the machine's own python3 and packages (no venv,
# nothing installed; twinserve/ links the rooms): 300 steps of `base` in bf16, evaluated →
# benchmarks/results/gpu_train.json.
gpu-check:
	PYTHONPATH=. $(PYTHON) -m twinserve.cli bench gpu-train --quiet

# Likewise: `twin bench transfer` with the cohort's core trained for 2.5 minutes of the GPU and the
# twins from scratch for 1500 steps → benchmarks/results/transfer_gpu.{json,png}.
# TRANSFER_WORKDIR: its recordings take about 1 GB per 12 minutes; a memory-backed folder writes fastest.
# A larger cohort: e.g. TRANSFER_COHORT="40 41 42 43 47 48 49 50" TRANSFER_COHORT_MINUTES=30.
TRANSFER_WORKDIR ?= transfer-bench-gpu
TRANSFER_COHORT ?= 40 41 42 43
TRANSFER_COHORT_MINUTES ?= 12
TRANSFER_CORE_MINUTES ?= 2.5
gpu-transfer:
	PYTHONPATH=. $(PYTHON) -m twinserve.cli bench transfer --workdir $(TRANSFER_WORKDIR) --device cuda --jobs 6 --workers 2 \
		--cohort $(TRANSFER_COHORT) --cohort-minutes $(TRANSFER_COHORT_MINUTES) \
		--core-steps 100000 --core-wall-minutes $(TRANSFER_CORE_MINUTES) --steps 1500 --head-steps 2000 --quiet \
		--out benchmarks/results/transfer_gpu.json

clean:
	rm -rf $(VENV) demo
