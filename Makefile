# Two entry points: `make demo` and `make test`. Both create or reuse .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all test-fast test-kernels install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Draw the synthetic dataset, pack it into shards, train the small demo model on it,
# then translate the held-out test scenes with the trained generator.
demo: $(STAMP)
	$(BIN)/python scripts/make_demo_data.py --output demo/folders
	$(BIN)/python scripts/make_shards.py --input demo/folders --output demo/shards --shard-size 64 --overwrite
	$(BIN)/python scripts/train.py --config configs/demo.yaml
	$(BIN)/python scripts/translate.py --checkpoint runs/demo/export --direction AtoB \
		--input demo/folders/testA --output runs/demo/translated/AtoB
	$(BIN)/python scripts/translate.py --checkpoint runs/demo/export --direction BtoA \
		--input demo/folders/testB --output runs/demo/translated/BtoA
	@echo
	@echo "Demo finished. Results in runs/demo/:"
	@echo "  samples/      sample grids (real | translated | reconstructed | identity) during training"
	@echo "  translated/   the test scenes translated A->B and B->A"
	@echo "  export/       the trained generators (safetensors + architecture JSON)"
	@echo "  checkpoints/  resumable checkpoints;  metrics.jsonl  the logged losses"
	@echo
	@echo "Try the model in the browser: $(BIN)/cyclegan-demo --checkpoint runs/demo  (then open http://127.0.0.1:7860)"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not heavy"

test-all: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not slurm"

# The suite again with other CPU kernels (results must not depend on one CPU's rounding).
test-kernels: $(STAMP)
	ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 $(BIN)/python -m pytest
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest

clean:
	rm -rf demo runs
