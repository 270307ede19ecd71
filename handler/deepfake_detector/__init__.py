"""Deepfake detection for faces in images and videos, independent of any model server.

The public surface::

    from deepfake_detector import DetectionPipeline, PipelineSettings, ModelConfig, build_detector

Modules, one job each: ``media`` (bytes -> frames), ``faces`` (frames -> face boxes), ``transforms``
(boxes -> normalised crops, shared with training), ``network`` (the model and its weights file),
``pipeline`` (all of the above for a batch of requests), ``process`` (a worker's threads and allocator),
``audit`` and ``drift`` (what the handler records), ``errors`` and ``config``.
"""

from .config import ModelConfig, PipelineSettings
from .errors import InputError, WeightsMismatchError
from .network import (
    DeepfakeDetector,
    build_detector,
    file_sha256,
    load_weights,
    read_model_config,
    save_weights,
)
from .pipeline import BatchReport, DetectionPipeline

__all__ = [
    "BatchReport",
    "DeepfakeDetector",
    "DetectionPipeline",
    "InputError",
    "ModelConfig",
    "PipelineSettings",
    "WeightsMismatchError",
    "build_detector",
    "file_sha256",
    "load_weights",
    "read_model_config",
    "save_weights",
]
