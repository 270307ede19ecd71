"""TorchServe adapter for the deepfake detector: a thin shell over ``deepfake_detector.DetectionPipeline``.

It reads the archive (weights, ``model-config.yaml``'s ``handler:`` section, the archive manifest),
pulls each request's raw bytes out of TorchServe's request dicts, runs the pipeline on the whole batch
and gives every request its own status: 200 with a verdict, or a 4xx with ``{"error", "detail"}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_ARCHIVE_DIR = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_ARCHIVE_DIR]:
    # The archive's own copy of the pipeline must win over any installed one: each version is self-contained.
    sys.path.insert(0, _ARCHIVE_DIR)

import torch  # noqa: E402
from deepfake_detector import DetectionPipeline, InputError, PipelineSettings, file_sha256  # noqa: E402

logger = logging.getLogger(__name__)

ARCHIVE_MANIFEST = "archive_manifest.json"
_STATUS_PHRASES = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
                   422: "Unprocessable Entity"}


class DeepfakeDetectorHandler:
    """initialize(context) once per worker, then handle(batch, context) for every batch of requests."""

    def __init__(self) -> None:
        self.pipeline: DetectionPipeline | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = properties.get("model_dir") or _ARCHIVE_DIR
        model_section = (context.manifest or {}).get("model", {})
        version = str(model_section.get("modelVersion", "unversioned"))
        serving_config = context.model_yaml_config or {}
        settings = PipelineSettings.from_mapping(serving_config.get("handler"))

        weights = os.path.join(model_dir, model_section.get("serializedFile", "weights.safetensors"))
        _verify_weights(weights, os.path.join(model_dir, ARCHIVE_MANIFEST))

        device = _select_device(properties.get("gpu_id"))
        if device.type == "cpu":
            torch.set_num_threads(settings.cpu_threads or _threads_per_worker(serving_config.get("minWorkers", 1)))
        self.pipeline = DetectionPipeline.from_weights(weights, settings, device, version)
        info = self.pipeline.model_info
        logger.info("deepfake detector %s version %s on %s (%d torch threads)",
                    info["name"], version, device, torch.get_num_threads())
        if not info["trained"]:
            logger.warning(
                "model %s version %s carries UNTRAINED weights (seeded initialisation): its verdicts are "
                "placeholders; build an archive from trained weights with `make mar WEIGHTS=... VERSION=...`",
                info["name"], version,
            )
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        assert self.pipeline is not None, "initialize() must run before handle()"
        started = time.perf_counter()
        extracted = [request_body(request) for request in data]
        bodies = [body for body in extracted if isinstance(body, bytes)]
        report = self.pipeline.score_batch(bodies)
        scored = iter(report.outcomes)
        outcomes = [body if isinstance(body, InputError) else next(scored) for body in extracted]

        responses = []
        for index, outcome in enumerate(outcomes):
            context.set_response_content_type(index, "application/json")
            if isinstance(outcome, InputError):
                context.set_response_status(outcome.status, _STATUS_PHRASES.get(outcome.status, ""), index)
                responses.append(outcome.to_json())
            else:
                responses.append(outcome)
        logger.info(
            "scored batch: requests=%d errors=%d crops=%d ms=%.1f stages_ms=%s",
            len(data), sum(isinstance(o, InputError) for o in outcomes), report.crops,
            1000 * (time.perf_counter() - started),
            json.dumps({k: round(1000 * v, 1) for k, v in report.stage_seconds.items()}),
        )
        return responses


def request_body(request: dict[str, Any]) -> bytes | InputError:
    """The raw bytes of one request: the body itself (octet-stream) or the first file of a multipart form."""
    for key in ("data", "body", "file", "image", "video"):
        if key in request:
            value = request[key]
            break
    else:
        value = next(iter(request.values()), None) if request else None
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, bytes):
        return value
    if value is None:
        return InputError("empty_body", "the request has no body; send the raw bytes of an image or a video", 400)
    return InputError(
        "unsupported_media",
        f"the body arrived as {type(value).__name__} (a JSON or text Content-Type); send the file's raw "
        "bytes with Content-Type: application/octet-stream, or as a multipart file field",
        415,
    )


def _verify_weights(weights: str, manifest_path: str) -> None:
    """Refuse to serve weights whose sha256 differs from the one the archive was built with."""
    if not os.path.exists(manifest_path):
        logger.warning("no %s in the archive: weights integrity not checked", ARCHIVE_MANIFEST)
        return
    with open(manifest_path) as handle:
        expected = json.load(handle)["weights_sha256"]
    actual = file_sha256(weights)
    if actual != expected:
        raise RuntimeError(
            f"weights {os.path.basename(weights)} have sha256 {actual}, but the archive manifest says "
            f"{expected}: the archive was altered or corrupted; rebuild it with `make mar`"
        )


def _select_device(gpu_id: Any) -> torch.device:
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def _threads_per_worker(workers: int) -> int:
    """Split the cores among the model's workers so they do not oversubscribe the CPU."""
    return max(1, (os.cpu_count() or 1) // max(1, int(workers)))
