"""Deepfake detection for faces in images and videos, independent of any model server.

The public surface::

    from deepfake_detector import DetectionPipeline, PipelineSettings, ModelConfig, Verdict, build_detector

Modules, one job each:

=================  ======================================================================================
``media``          bytes -> frames (format sniffing, limits, decoding, seeking)
``sampling``       which frames of a video are scored, and the cheapest way to decode them
``faces``          frames -> face boxes (MTCNN, the detection copy, the second look, the selection policy)
``tracks``         a video's faces linked into one track per person
``transforms``     boxes -> normalised crops: the preprocessing training shares
``architecture``   the network: timm backbone and the design's head
``weights``        the safetensors weights file and the ModelConfig inside it
``untrained``      the seeded, untrained built-in default
``runtimes``       where the forward pass runs (PyTorch, ONNX Runtime), chosen once at load
``pipeline``       all of the above for a batch of requests
``verdict``        the answer's types, JSON form and validation, and the scoring rules
``archive``        the ``.mar`` format: layout, manifest, reading, verifying, writing
``config``         ModelConfig (what weights are) and PipelineSettings (how a version serves them)
``errors``         errors a caller can act on
``audit``          the JSON-lines audit log
``drift``          the share of FAKE verdicts over a window
``cpu_tuning``     a scoring process's CPU threads and allocator
=================  ======================================================================================

Names are imported lazily, so that light modules (``verdict``, ``archive``) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArchiveManifest": "archive",
    "DEFAULT_MODEL_NAME": "archive",
    "BatchReport": "pipeline",
    "DetectionPipeline": "pipeline",
    "DeepfakeDetector": "architecture",
    "InputError": "errors",
    "RequestError": "errors",
    "TemporaryError": "errors",
    "WeightsMismatchError": "errors",
    "ModelConfig": "config",
    "PipelineSettings": "config",
    "Verdict": "verdict",
    "build_detector": "untrained",
    "load_weights": "weights",
    "read_model_config": "weights",
    "save_weights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
