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

.PHONY: help install java tini redis nginx mar serve jobs stop status renew-keys test test-fast lint clean

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-serving.txt requirements-jobs.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed java tini redis nginx  ## Create .venv with the pinned requirements (and Java, tini, redis-server, nginx if missing)

java:  ## Make sure Java 11+ is on PATH (TorchServe's frontend), installing it with apt-get if needed
	@command -v java >/dev/null || { command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless) || \
		{ echo "TorchServe needs Java 11+: install openjdk-17-jre-headless"; exit 1; }; }

tini:  ## Make sure tini (the image's PID 1) is on PATH for the image tests, installing it with apt-get if needed
	@command -v tini >/dev/null || { command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq tini) || \
		echo "warning: no tini (apt-get install tini): tests/server/test_image.py will be skipped"; }

redis:  ## Make sure redis-server (the job service's broker and store) is on PATH, installing it with apt-get if needed
	@command -v redis-server >/dev/null || { command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq redis-server) || \
		{ echo "the job service needs redis-server: apt-get install redis-server"; exit 1; }; }

nginx:  ## Make sure nginx and its njs module (the fleet's gateway) are installed, with apt-get if needed
	@{ { test -x /usr/sbin/nginx || command -v nginx >/dev/null; } && test -e /usr/lib/nginx/modules/ngx_http_js_module.so && command -v openssl >/dev/null; } || \
		{ command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq nginx-light libnginx-mod-http-js openssl) || \
		{ echo "the fleet's gateway needs nginx with njs: apt-get install nginx-light libnginx-mod-http-js openssl"; exit 1; }; }

mar: install  ## Build model_store/$(NAME)-$(VERSION).mar (WEIGHTS=file.safetensors, default: untrained seeded; MAR_ARGS="--set precision=int8")
	$(PY) -m deepfake_ops.build_mar --name $(NAME) --version $(VERSION) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(MAR_ARGS)

# Rebuilt when what goes into an archive changes (the handler, the detector package, its settings, the builder
# and the golden requests it records), so `make serve` never serves stale code.
ARCHIVE_SOURCES := $(wildcard handler/*.py detector/deepfake_detector/*.py config/*.yaml config/*.properties) \
	ops/deepfake_ops/build_mar.py ops/deepfake_ops/golden.py ops/deepfake_ops/archive_handler.py \
	ops/deepfake_ops/packaged.py ops/deepfake_ops/quantize.py
$(MAR): $(ARCHIVE_SOURCES)
	$(MAKE) mar

REPLICAS ?= 1
FLEET_DIR := .run/fleet
FLEET_RUNNING := $(wildcard $(FLEET_DIR)/fleet.json)

serve: install $(MAR)  ## Start TorchServe on 127.0.0.1:8080 with the default model, wait for READY, print a curl; REPLICAS=N>1 (or GATEWAY=1): N replicas behind the gateway on 127.0.0.1:8000
	@if [ "$(REPLICAS)" -gt 1 ] || [ "$(GATEWAY)" = 1 ]; then \
		$(PY) -m deepfake_ops.fleet --run-dir $(FLEET_DIR) start --replicas $(REPLICAS) --model $(NAME) --version $(VERSION) \
			$(if $(TLS_CERT),--tls-certificate $(TLS_CERT)) $(if $(TLS_KEY),--tls-key $(TLS_KEY)); \
	else $(PY) -m deepfake_ops.server start --model $(NAME) --archive $(notdir $(MAR)); fi

jobs: install  ## Start Redis, the Celery workers and the job API (127.0.0.1:8090) beside `make serve`'s server
	$(PY) -m deepfake_jobs.service start

stop:  ## Stop what `make serve` (one server or a fleet) and `make jobs` started; waits until no process is left
	@if [ -x $(PY) ]; then status=0; $(PY) -m deepfake_jobs.service stop || status=1; \
		$(PY) -m deepfake_ops.server stop || status=1; \
		if [ -e $(FLEET_DIR)/fleet.json ]; then $(PY) -m deepfake_ops.fleet --run-dir $(FLEET_DIR) stop || status=1; fi; \
		exit $$status; else echo "nothing to stop"; fi

status:  ## Show the running server's versions and workers (a fleet's: each replica's phase, restarts, key renewals)
	$(if $(FLEET_RUNNING),$(PY) -m deepfake_ops.fleet --run-dir $(FLEET_DIR) status,$(PY) -m deepfake_ops.server status --model $(NAME))

renew-keys:  ## Fleet: renew every replica's TorchServe keys now (each drained first; clients keep their gateway keys)
	$(PY) -m deepfake_ops.fleet --run-dir $(FLEET_DIR) renew

test: install  ## Every test: tests/unit, tests/handler (no Java), tests/server (real TorchServe), tests/jobs (+ Redis, Celery), tests/fleet (+ nginx)
	$(PY) -m pytest -v tests/unit tests/handler tests/server tests/jobs tests/fleet

test-fast: install  ## tests/unit and tests/handler: no server, no Java
	$(PY) -m pytest -v tests/unit tests/handler

lint: install  ## ruff
	$(VENV)/bin/ruff check detector handler jobs ops loadtests scripts tests training

clean:  ## Remove built archives, run folders and caches (keeps .venv)
	rm -rf model_store/*.mar .run reports .pytest_cache

.PHONY: loadtest loadtest-jobs loadtest-fleet benchmark load-media soak
LOADTEST_USERS ?= 4
LOADTEST_TIME ?= 60s
LOADTEST_CLASS ?= MixedUser
LOADTEST_JOB_USERS ?= 1

load-media: install  ## Make the load-test media (480p/1080p/4K photos, 720p clip) from real media into reports/media
	$(PY) -m deepfake_ops.load_media

loadtest: install $(MAR)  ## Headless Locust run (LOADTEST_CLASS/USERS/TIME): CSV, HTML and PNG under reports/loadtest, one summary line; a running fleet through its gateway
	$(PY) -m deepfake_ops.loadtest --user-class $(LOADTEST_CLASS) --users $(LOADTEST_USERS) --time $(LOADTEST_TIME) \
		--model $(NAME) $(if $(MODEL_VERSION),--model-version $(MODEL_VERSION))

loadtest-jobs: install $(MAR)  ## 480p photos' p95 alone, then beside LOADTEST_JOB_USERS long-video jobs (LOADTEST_USERS/TIME per phase; JOBS_MODEL=name: jobs on a second registration); `make jobs`'s or a private one
	$(PY) -m deepfake_ops.loadtest --with-jobs --users $(LOADTEST_USERS) --time $(LOADTEST_TIME) \
		--job-users $(LOADTEST_JOB_USERS) --model $(NAME) $(if $(MODEL_VERSION),--model-version $(MODEL_VERSION)) \
		$(if $(JOBS_MODEL),--jobs-model $(JOBS_MODEL))

FLEET_REPLICAS ?= 2
LOADTEST_ROUNDS ?= 2
loadtest-fleet: install $(MAR)  ## What the gateway costs: LOADTEST_CLASS on 1 private replica direct, then 1 and FLEET_REPLICAS behind the gateway, LOADTEST_ROUNDS rounds; the ratios
	$(PY) -m deepfake_ops.loadtest --fleet-vs-direct $(FLEET_REPLICAS) --user-class $(LOADTEST_CLASS) --users $(LOADTEST_USERS) \
		--time $(LOADTEST_TIME) --rounds $(LOADTEST_ROUNDS) --model $(NAME)

SOAK_MINUTES ?= 12
soak: install $(MAR)  ## Memory soak (SOAK_MINUTES, mixed heavy traffic on a private server): each worker's RSS after warm-up and at the end
	$(PY) -m deepfake_ops.soak --minutes $(SOAK_MINUTES)

benchmark: install  ## In-process vs served throughput, stage by stage; table and JSON under reports/ (BENCH_ARGS=--quick)
	$(PY) -m deepfake_ops.benchmark $(BENCH_ARGS)

.PHONY: docker lint-deploy
VARIANT ?= cpu
IMAGE ?= deepfake-detector:$(VARIANT)

docker: $(MAR)  ## Build the image (python:3.11-slim base; VARIANT=cpu|gpu, IMAGE=name:tag); needs Docker
	@command -v docker >/dev/null || { echo "docker is not installed here; the Dockerfile is checked by make lint-deploy"; exit 1; }
	docker build --target $(VARIANT) -t $(IMAGE) .

lint-deploy: install  ## Lint the Dockerfile (hadolint) and validate deploy/*.yaml against Kubernetes schemas, offline
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/*.yaml

.PHONY: rollout-status deploy verify promote rollback retire compare
WORKERS ?= 1
A ?= 1.0
B ?= 2.0
ROLLOUT := $(PY) -m deepfake_ops.rollout --name $(NAME) $(if $(FLEET_RUNNING),--fleet $(FLEET_DIR))

rollout-status: install  ## Versions in model_store/ (sha256, created, trained) beside the server's, workers, default
	$(ROLLOUT) status

deploy: install  ## Check VERSION's archive (weights sha256), register it beside the others with WORKERS workers
	$(ROLLOUT) deploy $(VERSION) --workers $(WORKERS)

verify: install  ## Replay VERSION's golden requests on /predictions/NAME/VERSION; fails on any mismatch
	$(ROLLOUT) verify $(VERSION)

promote: install  ## Verify VERSION, then make it the default
	$(ROLLOUT) promote $(VERSION)

rollback: install  ## Make the previous default the default again (history in .run/rollout_history.json)
	$(ROLLOUT) rollback

retire: install  ## Unregister VERSION (refused for the default)
	$(ROLLOUT) retire $(VERSION)

compare: install  ## A/B on the live server: DATA (folder with real/ and fake/, or path,label CSV), versions A and B
	$(PY) -m deepfake_ops.compare $(DATA) --a $(A) --b $(B) --name $(NAME)

# Training (training/deepfake_training; scripts/prepare_faces.py, train.py, evaluate.py; deepfake_ops.train_demo).
DATASET ?=
FACES ?= data/faces
RUN ?= runs/train
BACKBONE ?= efficientnet_b4
TRAIN_ARGS ?=
DEMO_VERSION ?= 1.1
.PHONY: train-demo train evaluate

train-demo: install  ## End to end on CPU (1-2 min quiet, 15 max): package faces -> crops -> self-blends -> lite0 -> eval -> archive DEMO_VERSION -> served
	$(PY) -m deepfake_ops.train_demo --version $(DEMO_VERSION)

train: install  ## Crop DATASET (FF++ or real/ + fake/) into FACES, train BACKBONE into RUN (TRAIN_ARGS=...)
	@test -n "$(DATASET)" || { echo "usage: make train DATASET=path/to/videos [BACKBONE=...] [TRAIN_ARGS=...]"; exit 1; }
	$(PY) scripts/prepare_faces.py $(DATASET) $(FACES)
	$(PY) scripts/train.py $(FACES)/index.csv $(RUN) --backbone $(BACKBONE) $(TRAIN_ARGS)

evaluate: install  ## Evaluate RUN/best.safetensors on the test split of FACES (metrics JSON, ROC and confusion PNGs)
	$(PY) scripts/evaluate.py $(RUN)/best.safetensors $(FACES)/index.csv $(RUN)/evaluation
