"""TorchServe adapter for the deepfake detector: a thin shell over ``deepfake_detector.DetectionPipeline``.

It reads the archive (weights, ``model-config.yaml``'s ``handler:`` section, the archive manifest),
pulls each request's raw bytes out of TorchServe's request dicts, runs the pipeline on the whole batch
and gives every request its own status: 200 with a verdict, or an error status with ``{"error", "detail",
"retryable"}`` (4xx for the request's own fault, 503 with ``Retry-After`` for a worker's passing shortage).
Each batch also feeds the Prometheus metrics declared in ``config/metrics.yaml`` and appends one line
per request to the audit log (``deepfake_detector.audit``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_ARCHIVE_DIR = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_ARCHIVE_DIR]:
    # The archive's own copy of the pipeline must win over any installed one: each version is self-contained.
    sys.path.insert(0, _ARCHIVE_DIR)

import torch  # noqa: E402
from deepfake_detector import archive  # noqa: E402
from deepfake_detector.audit import AuditLog, AuditSettings, audit_record, trace_token  # noqa: E402
from deepfake_detector.config import PipelineSettings  # noqa: E402
from deepfake_detector.cpu_tuning import keep_freed_memory, threads_per_worker, use_cpu_threads  # noqa: E402
from deepfake_detector.drift import VerdictWindow, window_size  # noqa: E402
from deepfake_detector.errors import InputError, RequestError  # noqa: E402
from deepfake_detector.media import check_video_temp_dir  # noqa: E402
from deepfake_detector.pipeline import DetectionPipeline  # noqa: E402
from deepfake_detector.sampling import SAMPLING_FIELD, SAMPLING_HEADER, Sampling, parse_sampling  # noqa: E402
from deepfake_detector.verdict import Verdict  # noqa: E402
from ts.metrics.metric_cache_errors import MetricsCacheKeyError  # noqa: E402
from ts.metrics.metric_type_enum import MetricTypes  # noqa: E402

logger = logging.getLogger(__name__)

_UNDECLARED: set[str] = set()
_STATUS_PHRASES = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
                   422: "Unprocessable Entity", 500: "Internal Server Error", 503: "Service Unavailable"}
REQUEST_ID_HEADER = "X-Request-Id"
CLIENT_HEADER = "X-Deepfake-Client"
"""Set by the fleet's gateway (config/gateway/gateway_server.conf): the request's id and the client key's name."""
_RETRY_AFTER_S = "1"  # seconds, on a retryable error: a full temp area drains as the batches in flight finish


class DeepfakeDetectorHandler:
    """initialize(context) once per worker, then handle(batch, context) for every batch of requests."""

    def __init__(self) -> None:
        self.pipeline: DetectionPipeline | None = None
        self.audit: AuditLog | None = None
        self.verdicts = VerdictWindow()
        self.model_name = archive.DEFAULT_MODEL_NAME
        self.version = "unversioned"
        self.initialized = False

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = properties.get("model_dir") or _ARCHIVE_DIR
        model_section = (context.manifest or {}).get("model", {})
        version = str(model_section.get("modelVersion", "unversioned"))
        self.model_name = str(model_section.get("modelName") or properties.get("model_name")
                              or self.model_name)
        self.version = version
        serving_config = context.model_yaml_config or {}
        settings = PipelineSettings.from_mapping(serving_config.get("handler"))

        weights = os.path.join(model_dir, model_section.get("serializedFile", archive.WEIGHTS_FILE))
        if archive.verify_unpacked(model_dir) is None:
            logger.warning("no %s in the archive: weights integrity not checked", archive.MANIFEST_FILE)

        device = select_device(properties.get("gpu_id"))
        video_temp = check_video_temp_dir()
        # On a GPU too: decoding, resizing and the crops run on the CPU, in these threads.
        use_cpu_threads(settings.cpu_threads or threads_per_worker(serving_config.get("minWorkers", 1)))
        kept = keep_freed_memory(settings.keep_freed_mb)
        onnx_file = (os.path.join(model_dir, archive.onnx_file_name(settings.precision))
                     if settings.forward == "onnxruntime" else None)
        self.pipeline = DetectionPipeline.from_weights(weights, settings, device=device, version=version,
                                                       onnx_file=onnx_file, model_name=self.model_name)
        warm_up_s = self.pipeline.warm_up()
        self.verdicts = VerdictWindow(window_size())
        self.audit = AuditLog(AuditSettings.from_environment())
        if self.audit.enabled:
            logger.info("audit log: %s", self.audit.settings.path)
        logger.info("video temp folder: %s", video_temp)
        info = self.pipeline.model_info
        logger.info("deepfake detector %s version %s on %s (%d threads, forward: %s %s, face search: %s, freed "
                    "memory kept: %s, warm-up %.2f s)", info.name, version, device, torch.get_num_threads(),
                    self.pipeline.runtime.name, info.compute, self.pipeline.face_detector.stages.networks.name,
                    f"up to {settings.keep_freed_mb} MB" if kept else "no", warm_up_s)
        if not info.trained:
            logger.warning(
                "model %s version %s carries UNTRAINED weights (seeded initialisation): its verdicts are "
                "placeholders; build an archive from trained weights with `make mar WEIGHTS=... VERSION=...`",
                info.name, version,
            )
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        assert self.pipeline is not None, "initialize() must run before handle()"
        started = time.perf_counter()
        headers = [_headers(context, index) for index in range(len(data))]
        inputs = [scoring_input(request, headers[index]) for index, request in enumerate(data)]
        accepted = [item for item in inputs if not isinstance(item, RequestError)]
        report = self.pipeline.score_batch([body for body, _ in accepted], [sampling for _, sampling in accepted])
        scored = iter(report.outcomes)
        outcomes = [item if isinstance(item, RequestError) else next(scored) for item in inputs]

        for index, outcome in enumerate(outcomes):
            context.set_response_content_type(index, "application/json")
            if isinstance(outcome, RequestError):
                context.set_response_status(outcome.status, _STATUS_PHRASES.get(outcome.status, ""), index)
                if outcome.retryable:
                    context.set_response_header(index, "Retry-After", _RETRY_AFTER_S)
            else:
                self.verdicts.add(outcome.is_fake)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        traced = [(trace_token(_header(h, REQUEST_ID_HEADER)), trace_token(_header(h, CLIENT_HEADER)))
                  for h in headers]
        logger.info(
            "scored batch: requests=%d errors=%d crops=%d ms=%.1f stages_ms=%s x_request_ids=%s",
            len(data), sum(isinstance(o, RequestError) for o in outcomes), report.crops, elapsed_ms,
            json.dumps({k: round(1000 * v, 1) for k, v in report.stage_seconds.items()}),
            ",".join(request_id or "-" for request_id, _ in traced),
        )
        stage_ms = {stage: 1000 * seconds for stage, seconds in report.stage_seconds.items()}
        stage_ms["handler"] = elapsed_ms
        record_metrics(getattr(context, "metrics", None), (self.model_name, self.version), outcomes,
                       stage_ms, self.verdicts)
        if self.audit is not None and self.audit.enabled:
            for index, (item, outcome) in enumerate(zip(inputs, outcomes, strict=True)):
                self.audit.write(audit_record(
                    _request_id(context, index), None if isinstance(item, RequestError) else item[0], outcome,
                    self.version, elapsed_ms, *traced[index],
                ))
        return [outcome.to_json() for outcome in outcomes]


def scoring_input(request: dict[str, Any], headers: dict[str, str]) -> tuple[bytes, Sampling | None] | RequestError:
    """What the pipeline scores for one request (its bytes and the sampling it asks for), or the error that
    request alone is answered with: its body's first, then its sampling's."""
    body = request_body(request)
    if isinstance(body, RequestError):
        return body
    sampling = request_sampling(request, headers)
    return sampling if isinstance(sampling, RequestError) else (body, sampling)


def request_body(request: dict[str, Any]) -> bytes | InputError:
    """The raw bytes of one request: the body itself (octet-stream) or the first file of a multipart form."""
    for key in ("data", "body", "file", "image", "video"):
        if key in request:
            value = request[key]
            break
    else:
        value = next((value for key, value in request.items() if key != SAMPLING_FIELD), None)
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, bytes):
        return value
    if value is None:
        return InputError("empty_body", "the request has no body; send the raw bytes of an image or a video",
                          400)
    return InputError(
        "unsupported_media",
        f"the body arrived as {type(value).__name__} (a JSON or text Content-Type); send the file's raw "
        "bytes with Content-Type: application/octet-stream, or as a multipart file field",
        415,
    )


def request_sampling(request: dict[str, Any], headers: dict[str, str]) -> Sampling | RequestError | None:
    """The sampling a request asks for (the ``X-Deepfake-Sampling`` header, else a ``sampling`` form field), None
    when it asks for none; a value that cannot be used is that request's 400."""
    text: Any = _header(headers, SAMPLING_HEADER)
    if text is None:
        text = request.get(SAMPLING_FIELD)
    if text is None:
        return None
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    try:
        return parse_sampling(str(text))
    except InputError as error:
        return error


def _headers(context: Any, index: int) -> dict[str, str]:
    """The request's headers as TorchServe's context gives them (none when the context carries no requests,
    as in a test's stand-in)."""
    if getattr(context, "request_processor", None) is None:
        return {}
    return dict(context.get_all_request_header(index) or {})


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((str(value) for key, value in headers.items() if key.lower() == name.lower()), None)


def record_metrics(
    metrics: Any, model: tuple[str, str], outcomes: list[Verdict | RequestError], stage_ms: dict[str, float],
    verdicts: VerdictWindow,
) -> None:
    """Feed the batch into the metrics declared in config/metrics.yaml; a missing declaration is skipped."""
    if metrics is None:
        return
    emit = _metric_emitter(metrics, list(model))
    for outcome in outcomes:
        if isinstance(outcome, RequestError):
            emit("DeepfakeRequests", MetricTypes.COUNTER, 1, "ERROR")
            continue
        emit("DeepfakeRequests", MetricTypes.COUNTER, 1, outcome.label)
        emit("DeepfakeFacesPerRequest", MetricTypes.HISTOGRAM, len(outcome.faces))
        if not outcome.face_detected:
            emit("DeepfakeNoFaceFallbacks", MetricTypes.COUNTER, 1)
    for stage, milliseconds in stage_ms.items():
        emit("DeepfakeStageTime", MetricTypes.HISTOGRAM, round(milliseconds, 3), stage)
    if verdicts.count:
        emit("DeepfakeFakeShare", MetricTypes.GAUGE, round(verdicts.fake_share, 6))
        emit("DeepfakeFakeShareWindow", MetricTypes.GAUGE, verdicts.count)


def _metric_emitter(metrics: Any, model_dimensions: list[str]) -> Callable[..., None]:
    """emit(name, type, value, *extra_dimensions) for metrics that carry ModelName and ModelVersion first."""
    def emit(name: str, metric_type: MetricTypes, value: float, *extra: str) -> None:
        try:
            metric = metrics.get_metric(name, metric_type)
        except MetricsCacheKeyError:
            if name not in _UNDECLARED:
                _UNDECLARED.add(name)
                logger.warning("metric %s is not declared in the metrics config: not exported", name)
            return
        metric.add_or_update(value, [*model_dimensions, *extra])

    return emit


def _request_id(context: Any, index: int) -> str | None:
    try:
        return context.get_request_id(index)
    except (AttributeError, KeyError, TypeError):
        return None


def select_device(gpu_id: Any) -> torch.device:
    """The GPU TorchServe assigned to this worker, or the CPU when it assigned none.

    A worker given a GPU that it cannot use fails to load, with the reason, rather than serve on the CPU
    at a fraction of the throughput the deployment was sized for.
    """
    if gpu_id is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"TorchServe assigned GPU {gpu_id} to this worker, but CUDA is not usable here (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}, devices seen: "
            f"{torch.cuda.device_count()}): check the NVIDIA driver and runtime, or run the CPU image"
        )
    index = int(gpu_id)
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"TorchServe assigned GPU {index}, but only {torch.cuda.device_count()} are visible")
    return torch.device(f"cuda:{index}")
