# Deepfake detector on TorchServe. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VERSION ?= 1.0
WEIGHTS ?=
NAME ?= deepfake_detector
MAR := model_store/$(NAME)-$(VERSION).mar
export HF_HUB_OFFLINE := 1

.PHONY: help install java mar serve stop status test test-fast lint clean

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed java  ## Create .venv with the pinned requirements (and Java if missing)

java:  ## Make sure Java 11+ is on PATH (TorchServe's frontend), installing it with apt-get if needed
	@command -v java >/dev/null || { command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless) || \
		{ echo "TorchServe needs Java 11+: install openjdk-17-jre-headless"; exit 1; }; }

mar: install  ## Build model_store/$(NAME)-$(VERSION).mar (WEIGHTS=file.safetensors, default: untrained seeded)
	$(PY) scripts/build_mar.py --name $(NAME) --version $(VERSION) $(if $(WEIGHTS),--weights $(WEIGHTS))

$(MAR):
	$(MAKE) mar

serve: install $(MAR)  ## Start TorchServe on 127.0.0.1:8080 with the default model, wait for READY, print a curl
	$(PY) scripts/server.py start --model $(NAME) --archive $(notdir $(MAR))

stop:  ## Stop the server started by `make serve`; waits until no process is left
	@if [ -x $(PY) ]; then $(PY) scripts/server.py stop; else echo "nothing to stop"; fi

status:  ## Show the running server's versions and workers
	$(PY) scripts/server.py status --model $(NAME)

test: install  ## Run every test (unit tests, then a real TorchServe on free loopback ports)
	$(PY) -m pytest -v

test-fast: install  ## Unit tests only (no server)
	$(PY) -m pytest -v -m "not server"

lint: install  ## ruff
	$(VENV)/bin/ruff check handler scripts loadtests tests

clean:  ## Remove built archives, run folders and caches (keeps .venv)
	rm -rf model_store/*.mar .run reports .pytest_cache
