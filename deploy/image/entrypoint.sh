#!/bin/sh
# The container's command, run by tini (PID 1, `tini -g`: a SIGTERM reaches this whole process group, so
# the frontend and every worker stop together). It lays out the writable folders under $APP_HOME/var,
# renders TorchServe's config from the repository's template, and becomes TorchServe in the foreground.
# The settings below have defaults here (the Dockerfile sets the container's); the paths under var/ are fixed.
set -eu
: "${APP_HOME:=/srv/deepfake}"
: "${LOAD_MODELS:=deepfake_detector-1.0.mar}"
: "${MODEL_STORE:=$APP_HOME/model-store}"
# Loopback unless told otherwise: the image opens inference and metrics to the pod network (Dockerfile).
: "${DEEPFAKE_BIND_ADDRESS:=127.0.0.1}"
: "${DEEPFAKE_INFERENCE_PORT:=8080}"
: "${DEEPFAKE_MANAGEMENT_PORT:=8081}"
: "${DEEPFAKE_METRICS_PORT:=8082}"
: "${DEEPFAKE_GRPC_INFERENCE_PORT:=7070}"
: "${DEEPFAKE_GRPC_MANAGEMENT_PORT:=7071}"

var="$APP_HOME/var"
export HOME="$var/home"
# TorchServe's launcher turns TEMP into java.io.tmpdir: archives are unpacked and worker sockets live there.
export TEMP="$var/tmp" TMPDIR="$var/tmp"
export LOG_LOCATION="$var/logs" METRICS_LOCATION="$var/logs"
export DEEPFAKE_AUDIT_LOG="${DEEPFAKE_AUDIT_LOG:-$var/logs/audit.log}"
# Request videos are written here for the decoder: the manifest mounts a memory volume with a size limit.
export DEEPFAKE_VIDEO_TMPDIR="${DEEPFAKE_VIDEO_TMPDIR:-$var/video-tmp}"
# Nothing is fetched from a model hub, and nothing is written beside the code.
export HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p "$HOME" "$TEMP" "$LOG_LOCATION" "$DEEPFAKE_VIDEO_TMPDIR" "$var/run"

# A value in a sed replacement: its \, & and the # delimiter escaped.
literal() { printf '%s' "$1" | sed -e 's/[\\&#]/\\&/g'; }
sed -e "s#@MODEL_STORE@#$(literal "$MODEL_STORE")#g" \
    -e "s#@LOAD_MODELS@#$(literal "$LOAD_MODELS")#g" \
    -e "s#@METRICS_CONFIG@#$(literal "$APP_HOME/config/metrics.yaml")#g" \
    -e "s#^inference_address=.*#inference_address=http://$DEEPFAKE_BIND_ADDRESS:$DEEPFAKE_INFERENCE_PORT#" \
    -e "s#^management_address=.*#management_address=http://127.0.0.1:$DEEPFAKE_MANAGEMENT_PORT#" \
    -e "s#^metrics_address=.*#metrics_address=http://$DEEPFAKE_BIND_ADDRESS:$DEEPFAKE_METRICS_PORT#" \
    -e "s#^grpc_inference_port=.*#grpc_inference_port=$DEEPFAKE_GRPC_INFERENCE_PORT#" \
    -e "s#^grpc_management_port=.*#grpc_management_port=$DEEPFAKE_GRPC_MANAGEMENT_PORT#" \
    "$APP_HOME/config/config.properties" > "$var/run/config.properties"

# TorchServe writes key_file.json into the folder it starts in; the health check reads it there.
cd "$var/run"
exec torchserve --start --foreground --ncs --ts-config "$var/run/config.properties" --model-store "$MODEL_STORE"
