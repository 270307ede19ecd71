# The detector's image, CPU or GPU, on a plain Python 3.11 base (the pinned stack needs Python >= 3.11;
# TorchServe's own 0.12.0 images ship 3.9):
#   docker build -t deepfake-detector:cpu .                     (make docker)
#   docker build --target gpu -t deepfake-detector:gpu .        (make docker VARIANT=gpu)
# The job service's image, without torch or Java, is the `jobs` target below; the fleet's gateway and sidecars,
# nginx with the operator package's light modules, the `fleet` target.
# torch 2.14.1 from PyPI carries its own CUDA 13.0 runtime (the nvidia-* wheels it pins), so both variants
# install the same packages and the GPU one's torch and CUDA always match; a GPU node needs an NVIDIA
# driver for CUDA 13.0 (R580 or newer) and the NVIDIA container runtime. The archives in model_store/ are
# baked in; mount another store over /srv/deepfake/model-store to serve others (LOAD_MODELS names what
# starts). It runs as uid 10001, never root, and writes only under /srv/deepfake/var.
# Without a container engine, the tests read this file: the requirements resolve for this base's Python
# (tests/unit/test_image_requirements.py), and the entrypoint, environment, user and folders below start
# TorchServe and serve a photo (tests/unit/test_image_entrypoint.py, tests/server/test_image.py).
FROM python:3.11-slim-bookworm AS base

# Java 17 for TorchServe's frontend; tini as PID 1, so that SIGTERM stops TorchServe and its workers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*

COPY requirements-serving.txt /tmp/requirements-serving.txt
RUN python -m pip install --no-cache-dir -r /tmp/requirements-serving.txt \
    && rm /tmp/requirements-serving.txt

# The rest of the environment (LOAD_MODELS, ports, paths under var/) has its defaults in entrypoint.sh.
ENV APP_HOME=/srv/deepfake \
    DEEPFAKE_BIND_ADDRESS=0.0.0.0
COPY deploy/image/ /srv/deepfake/bin/
COPY scripts/healthcheck.py /srv/deepfake/bin/healthcheck.py
COPY config/ /srv/deepfake/config/
COPY model_store/ /srv/deepfake/model-store/
RUN /srv/deepfake/bin/prepare.sh

USER 10001
WORKDIR /srv/deepfake/var
# In a pod the inference and metrics listeners face the pod network; management stays on loopback.
EXPOSE 8080 8082
# Healthy only when every registered model's default version has a READY worker (and after renewing
# TorchServe's expiring keys): /ping alone answers Healthy with no model loaded.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/srv/deepfake/bin/healthcheck.py"]

ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/srv/deepfake/bin/entrypoint.sh"]

# The GPU variant: which GPUs it sees is the runtime's choice (`docker run --gpus`, or the pod's nvidia.com/gpu
# through the device plugin), never every GPU of the node; TorchServe spreads the workers over what it sees.
FROM base AS gpu
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The job service (jobs/deepfake_jobs): the job API by default, a Celery worker with another command
# (deploy/deepfake-jobs.yaml). It plans and cuts videos and sends the pieces to TorchServe, so it has neither
# torch nor Java: requirements-jobs.txt, and of the checkout only the two packages it imports.
#   docker build --target jobs -t deepfake-jobs:0.1.0 .
FROM python:3.11-slim-bookworm AS jobs

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

COPY requirements-jobs.txt /tmp/requirements-jobs.txt
RUN python -m pip install --no-cache-dir -r /tmp/requirements-jobs.txt \
    && rm /tmp/requirements-jobs.txt

# Copied, not pip-installed: pyproject.toml installs all four packages, and the other two need torch.
# The run folder (uploads, api_keys.json) and TorchServe's key folder are volumes in a pod.
ENV APP_HOME=/srv/deepfake \
    PYTHONPATH=/srv/deepfake/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEEPFAKE_JOBS_RUN_DIR=/srv/deepfake/var/jobs \
    DEEPFAKE_JOBS_TORCHSERVE_RUN_DIR=/srv/deepfake/var/torchserve/run \
    DEEPFAKE_JOBS_API_HOST=0.0.0.0 \
    DEEPFAKE_JOBS_API_PORT=8090
COPY detector/deepfake_detector/ /srv/deepfake/lib/deepfake_detector/
COPY jobs/deepfake_jobs/ /srv/deepfake/lib/deepfake_jobs/
COPY deploy/image/prepare.sh /srv/deepfake/bin/prepare.sh
RUN /srv/deepfake/bin/prepare.sh

USER 10001
WORKDIR /srv/deepfake/var
EXPOSE 8090
# tini without -g: a SIGTERM reaches Celery's main process alone, which stops taking tasks and waits for the
# pieces in flight; sent to the whole group it would kill the pool's processes mid-piece.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sh", "-c", \
     "exec uvicorn deepfake_jobs.api:app --host \"$DEEPFAKE_JOBS_API_HOST\" --port \"$DEEPFAKE_JOBS_API_PORT\""]

# The fleet's gateway and each replica's sidecar (deploy/deepfake-fleet.yaml): nginx with its njs module, and of
# the checkout the two packages deepfake_ops.pod imports (no torch, no Java) and config/ (the gateway's templates,
# TorchServe's limits).
#   docker build --target fleet -t deepfake-fleet:0.1.0 .
FROM python:3.11-slim-bookworm AS fleet

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light libnginx-mod-http-js tini \
    && rm -rf /var/lib/apt/lists/*

COPY requirements-fleet.txt /tmp/requirements-fleet.txt
RUN python -m pip install --no-cache-dir -r /tmp/requirements-fleet.txt \
    && rm /tmp/requirements-fleet.txt

ENV APP_HOME=/srv/deepfake \
    PYTHONPATH=/srv/deepfake/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY detector/deepfake_detector/ /srv/deepfake/lib/deepfake_detector/
COPY ops/deepfake_ops/ /srv/deepfake/lib/deepfake_ops/
COPY config/ /srv/deepfake/config/
COPY deploy/image/prepare.sh /srv/deepfake/bin/prepare.sh
RUN /srv/deepfake/bin/prepare.sh

USER 10001
WORKDIR /srv/deepfake/var
EXPOSE 8000 8443 8444
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "deepfake_ops.pod", "gateway"]

# The CPU variant, the default target (last stage). It carries the same CUDA libraries, unused.
FROM base AS cpu
