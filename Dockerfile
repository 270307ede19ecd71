# The detector on the official TorchServe 0.12.0 image, CPU or GPU:
#   docker build -t deepfake-detector:cpu .                            (make docker)
#   docker build --build-arg VARIANT=gpu -t deepfake-detector:gpu .    (make docker VARIANT=gpu)
# The archives in model_store/ are baked in; mount another store over /srv/deepfake/model-store to
# serve others (and LOAD_MODELS names what starts). It runs as uid 10001, never root.
ARG VARIANT=cpu
FROM pytorch/torchserve:0.12.0-${VARIANT}

ARG LOAD_MODELS=deepfake_detector-1.0.mar
# In a pod the inference and metrics listeners must face the pod network; management stays on
# loopback (kubectl port-forward or exec reaches it). Token authorization stays on.
ARG BIND_ADDRESS=0.0.0.0

ENV APP_HOME=/srv/deepfake \
    LOG_LOCATION=/srv/deepfake/logs \
    METRICS_LOCATION=/srv/deepfake/logs \
    DEEPFAKE_AUDIT_LOG=/srv/deepfake/logs/audit.log \
    HF_HUB_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 0
COPY requirements-serving.txt /tmp/requirements-serving.txt
# A numeric user of our own: Kubernetes can verify runAsNonRoot only against a numeric uid.
RUN python -m pip install --no-cache-dir -r /tmp/requirements-serving.txt \
    && rm /tmp/requirements-serving.txt \
    && useradd --uid 10001 --gid 0 --create-home --home-dir /home/deepfake --shell /usr/sbin/nologin deepfake \
    && mkdir -p /srv/deepfake/logs \
    && chown -R 10001:0 /srv/deepfake

WORKDIR /srv/deepfake
COPY --chown=10001:0 config/ /srv/deepfake/config/
COPY --chown=10001:0 model_store/ /srv/deepfake/model-store/
COPY --chown=10001:0 scripts/healthcheck.py /srv/deepfake/healthcheck.py

# The container's config, rendered from the repository's template (as deepfake_ops.torchserve renders it).
RUN sed -e "s#@MODEL_STORE@#/srv/deepfake/model-store#g" \
        -e "s#@LOAD_MODELS@#${LOAD_MODELS}#g" \
        -e "s#@METRICS_CONFIG@#/srv/deepfake/config/metrics.yaml#g" \
        -e "s#^inference_address=http://127.0.0.1#inference_address=http://${BIND_ADDRESS}#" \
        -e "s#^metrics_address=http://127.0.0.1#metrics_address=http://${BIND_ADDRESS}#" \
        /srv/deepfake/config/config.properties > /srv/deepfake/container.properties \
    && chown 10001:0 /srv/deepfake/container.properties

USER 10001
EXPOSE 8080 8082
# /ping needs the inference key, which expires after 60 min: the check renews keys before it pings.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/srv/deepfake/healthcheck.py", "--key-file", "/srv/deepfake/key_file.json"]

ENTRYPOINT ["torchserve", "--start", "--foreground", "--ncs", \
            "--ts-config", "/srv/deepfake/container.properties", \
            "--model-store", "/srv/deepfake/model-store"]
