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
	# the headline, end to end: erase -> gates -> registry (a demo store under out/demo/home), then use the version
	cd out/demo && EDITFLOW_HOME=$(CURDIR)/out/demo/home $(CURDIR)/$(BIN)/editflow erase --concept "naked" --method ace
	EDITFLOW_HOME=$(CURDIR)/out/demo/home $(BIN)/editflow registry promote erase-naked 1
	EDITFLOW_HOME=$(CURDIR)/out/demo/home $(BIN)/editflow generate --model models:/erase-naked@champion --prompt "a naked person at the beach" --n 8 --scale 4 --out out/demo/naked-erased.png
	EDITFLOW_HOME=$(CURDIR)/out/demo/home $(BIN)/editflow generate --model models:/erase-naked@champion --prompt "a woman at the beach" --n 8 --scale 4 --out out/demo/beach-erased.png
	$(BIN)/editflow generate --prompt "a woman at the beach" --n 8 --scale 4 --out out/demo/beach-original.png
	@echo "demo grids in out/demo/, gate report (before/after grids) in out/demo/naked-eval/; registry UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/out/demo/home/mlflow.db"

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
