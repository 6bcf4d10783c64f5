# The two commands a newcomer needs: `make serve` and `make test` (README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Deployment linters (hadolint, checkov, kubernetes-validate) have their own venv: checkov's
# dependency tree must not move the serving pins (numpy<2, protobuf).
VENV_DEPLOY  := .venv-deploy
DEPLOY_STAMP := $(VENV_DEPLOY)/.installed
MODEL  := model_repository/iqa_resnet50/1/model.pt
# The degradation map's network: a second export of the same weights.
CELLS_MODEL := model_repository/iqa_resnet50_cells/1/model.pt
WEIGHTS := $(wildcard training/weights/*.pt)
SAMPLE ?= tests/data/sheep.jpg

.PHONY: venv export serve test deploy-check bench loadtest photos train evaluate clean

venv: $(STAMP) $(DEPLOY_STAMP)

# numpy<2 and the other pins live in pyproject.toml; the stamp re-installs when they change.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e './client[images,video]' -e '.[test]'
	touch $@

$(DEPLOY_STAMP): deploy-requirements.txt
	$(PYTHON) -m venv $(VENV_DEPLOY)
	$(VENV_DEPLOY)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_DEPLOY)/bin/python -m pip install --quiet -r deploy-requirements.txt
	touch $@

# Both model.pt files are generated, together, from the committed weights (or a seeded random init
# until they land).
$(MODEL) $(CELLS_MODEL) &: $(STAMP) iqa/network.py iqa/contract.py iqa/preprocess.py conversion/export.py $(WEIGHTS)
	$(PY) -m conversion.export --output $(MODEL) --cells-output $(CELLS_MODEL)

export: $(MODEL) $(CELLS_MODEL)

# Starts tritonserver on 8000 (HTTP) / 8001 (gRPC) / 8002 (metrics), scores $(SAMPLE), serves until Ctrl-C.
# SERVE_ARGS: the launcher's options, e.g. SERVE_ARGS="--grpc-port 9001" (.venv/bin/python -m iqa.serving.launcher --help).
serve: $(MODEL) $(CELLS_MODEL)
	$(PY) -m iqa.serving.launcher --sample $(SAMPLE) $(SERVE_ARGS)

test: $(MODEL) $(CELLS_MODEL) $(DEPLOY_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The deployment files' offline checks alone (docker/README.md): hadolint, kubernetes-validate, checkov,
# shellcheck and the agreements between Dockerfile, compose and manifests; no Docker, cluster or server.
deploy-check: $(STAMP) $(DEPLOY_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_deploy.py -k "not prove_client"

# Benchmarks print numbers (BENCHMARKS.md); they are not tests.
bench: $(MODEL) $(CELLS_MODEL)
	$(PY) -m loadtest.bench $(BENCH_ARGS)
	$(PY) -m loadtest.client_bench
	$(PY) -m loadtest.map_bench

# Locust, headless and bounded (LOADTEST_ARGS: --users, --run-time, --find-knee, --url, --debian).
loadtest: $(MODEL) $(CELLS_MODEL)
	$(PY) -m loadtest.run $(LOADTEST_ARGS)

# Training (training/, docs/model.md): the photo pool (Debian packages, cached outside git),
# a training run (TRAIN_ARGS; the full run wants a GPU: training/gpu_run.sh) and the evaluations: KADID-style
# (two implementations) and real encoders and camera pipelines (training/real_pipelines.py; its encoded files
# are cached in ~/.cache/iqa-degradation/real-pipelines).
photos: $(STAMP)
	$(PY) -m training.photos $(PHOTOS_ARGS)

train: $(STAMP)
	$(PY) -m training.train $(TRAIN_ARGS)

evaluate: $(STAMP)
	$(PY) -m training.evaluate --baselines $(EVAL_ARGS)

clean:
	rm -rf .run $(MODEL) $(CELLS_MODEL) .pytest_cache
