# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv if needed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.editflow-installed
export EDITFLOW_QUIET ?=
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: setup demo test test-slow lint world-train world-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: these two lie on this machine's disk; a bare `torch` pulls a multi-GB download.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/editflow info
	$(BIN)/editflow generate --prompt "a red star" --n 8 --scale 4 --out out/demo/red-star.png
	$(BIN)/editflow generate --prompt "a blue heart by kasimir" --n 8 --scale 4 --out out/demo/blue-heart-kasimir.png
	$(BIN)/editflow generate --prompt "a picture of zorbo" --n 8 --scale 4 --out out/demo/zorbo.png
	# nudity: the patch erases what prompts name (the before/after grid); the gates refuse it while
	# prompts that only imply nudity still draw it (docs/benchmarks.md, "Nudity")
	$(BIN)/editflow erase --concept naked --method ace --patch-only --out out/demo/naked.safetensors
	$(BIN)/editflow apply --patch out/demo/naked.safetensors --prompt "a naked person at the beach" --n 8 --scale 4 --out out/demo/naked-before-after.png
	# the whole path: erase -> gates -> registry (a demo store under out/demo/home), then use the version
	EDITFLOW_HOME=out/demo/home $(BIN)/editflow erase --concept skull --register demo-skull --out out/demo/skull.safetensors
	EDITFLOW_HOME=out/demo/home $(BIN)/editflow registry promote demo-skull 1
	EDITFLOW_HOME=out/demo/home $(BIN)/editflow generate --model models:/demo-skull@champion --prompt "a red skull" --n 8 --scale 4 --out out/demo/skull-erased.png
	@echo "demo grids in out/demo/, gate report in out/demo/skull-eval/; registry UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/out/demo/home/mlflow.db"

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check editflow tests flows registry bench

world-train: setup
	$(BIN)/editflow world train --out editflow/assets/embedded

world-check: setup
	$(BIN)/editflow world check

clean:
	rm -rf out .pytest_cache .ruff_cache
