# The two commands a newcomer needs: `make serve` and `make test` (README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  := model_repository/iqa_resnet50/1/model.pt
WEIGHTS := $(wildcard training/weights/*.pt)
SAMPLE ?= tests/data/sheep.jpg

.PHONY: venv export serve test bench clean

venv: $(STAMP)

# numpy<2 and the other pins live in pyproject.toml; the stamp re-installs when they change.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e './client[images,video]' -e '.[test]'
	touch $@

# model.pt is generated from the committed weights (or a seeded random init until they land).
$(MODEL): $(STAMP) iqa/network.py iqa/contract.py iqa/preprocess.py conversion/export.py $(WEIGHTS)
	$(PY) -m conversion.export --output $@

export: $(MODEL)

# Starts tritonserver on 8000 (HTTP) / 8001 (gRPC) / 8002 (metrics), scores $(SAMPLE), serves until Ctrl-C.
serve: $(MODEL)
	$(PY) -m iqa.serving.launcher --sample $(SAMPLE)

test: $(MODEL)
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks print numbers (BENCHMARKS.md); they are not tests.
bench: $(MODEL)
	$(PY) -m loadtest.bench $(BENCH_ARGS)
	$(PY) -m loadtest.client_bench

clean:
	rm -rf .run $(MODEL) .pytest_cache
