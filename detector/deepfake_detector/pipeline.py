"""Bytes in, verdicts out: the whole detector, independent of any server.

``DetectionPipeline.score_batch`` takes the bodies of several requests at once (a TorchServe batch, a
benchmark, a test) and returns one outcome per body, in order: a :class:`~.verdict.Verdict`, or the
RequestError that request earned. Decoding is per request, so one bad body never affects the others, and
the requests of a batch decode side by side on the threads the process was given (the decoders run in C
without the GIL: a core would otherwise idle while the other decodes a 4K photo). Face detection is
batched across every frame of every request, and every crop of every request (image faces and video
frames alike) is classified in chunks of at most ``max_crops_per_forward``. The runtime of the forward
pass is chosen once, here (``runtimes.select_runtime``), and the scoring rules are the verdict's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .architecture import DeepfakeDetector
from .config import PipelineSettings
from .errors import RequestError
from .faces import Face, FaceDetector, FrameFaces, check_searchable
from .media import DecodedMedia, decode_media
from .runtimes import Runtime, select_runtime
from .sampling import Sampling
from .transforms import Region, center_region, crop_and_resize, face_region, normalize
from .verdict import TIME_DECIMALS, Coverage, FaceScore, FrameScore, MediaInfo, ModelInfo, Verdict, relink_tracks
from .weights import load_weights

STAGES = ("decode", "detect", "crop", "forward")
logger = logging.getLogger(__name__)


@dataclass
class _Crop:
    """Where a crop came from: request, frame, and the face (None for the centre-crop fallback)."""

    request: int
    frame: int
    face: Face | None
    region: Region


@dataclass
class BatchReport:
    """The outcome for each body plus what the batch cost, stage by stage (for metrics and benchmarks)."""

    outcomes: list[Verdict | RequestError]
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    crops: int = 0


class DetectionPipeline:
    """Decode -> find faces -> crop and normalise -> classify -> aggregate, for a batch of request bodies."""

    def __init__(
        self,
        model: DeepfakeDetector,
        settings: PipelineSettings | None = None,
        device: str | torch.device = "cpu",
        version: str = "unversioned",
        onnx_file: str | Path | None = None,
        model_name: str | None = None,
    ) -> None:
        """``onnx_file`` (CPU, ``forward: onnxruntime``): run the network with ONNX Runtime from that file,
        exported from ``model`` if it does not exist; its outputs are checked against PyTorch's at load.
        ``model_name`` and ``version``: what the answers say served them (default name: the weights')."""
        self.settings = settings or PipelineSettings()
        self.device = torch.device(device)
        self.version = version
        self.config = model.config
        self.model_name = model_name or model.config.name
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.face_detector = FaceDetector(self.settings, self.device)
        self.runtime: Runtime = select_runtime(self.model, self.settings, self.device, onnx_file)
        self._check_size = functools.partial(check_searchable, self.settings)
        self.decode_threads = torch.get_num_threads()
        self._decoders = (ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
                          if self.decode_threads > 1 else None)

    @classmethod
    def from_weights(cls, weights: str | Path, settings: PipelineSettings | None = None, **options: Any
                     ) -> DetectionPipeline:
        """The pipeline of a weights file; ``options`` are the constructor's (device, version, ...)."""
        return cls(load_weights(weights), settings, **options)

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(self.model_name, self.version, self.config.backbone, self.config.trained,
                         self.runtime.compute)

    def score(self, body: bytes, sampling: Sampling | None = None) -> Verdict:
        """One body's result; raises its RequestError."""
        outcome = self.score_batch([body], [sampling]).outcomes[0]
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome

    def score_batch(self, bodies: Sequence[bytes], samplings: Sequence[Sampling | None] | None = None
                    ) -> BatchReport:
        """One outcome per body; ``samplings`` (one per body, None: the settings') choose a video's frames."""
        report = BatchReport(outcomes=[])
        samplings = list(samplings) if samplings is not None else [None] * len(bodies)
        with _timed(report, "decode"):
            if self._decoders is not None and len(bodies) > 1:
                decoded: list[DecodedMedia | RequestError] = list(self._decoders.map(self._decode, bodies, samplings))
            else:
                decoded = [self._decode(body, sampling) for body, sampling in zip(bodies, samplings, strict=True)]
        media = [(i, m) for i, m in enumerate(decoded) if isinstance(m, DecodedMedia)]

        with _timed(report, "detect"):
            frames = [frame for _, m in media for frame in m.frames]
            faces_per_frame = iter(self.face_detector.detect(frames) if frames else [])

        with _timed(report, "crop"):
            crops: list[_Crop] = []
            pixels: list[np.ndarray] = []
            found: dict[tuple[int, int], FrameFaces] = {}
            for request, m in media:
                for frame_position, frame in enumerate(m.frames):
                    found[(request, frame_position)] = faces = next(faces_per_frame)
                    for crop in self._plan_crops(request, frame_position, frame, faces.faces):
                        crops.append(crop)
                        pixels.append(crop_and_resize(frame, crop.region, self.config.input_size,
                                                      self.config.crop_filter))
        report.crops = len(crops)

        with _timed(report, "forward"):
            probabilities = self.classify(np.stack(pixels)) if pixels else np.zeros(0, dtype=np.float32)

        scores: dict[tuple[int, int], list[tuple[_Crop, float]]] = {}
        for crop, probability in zip(crops, probabilities.tolist()):
            scores.setdefault((crop.request, crop.frame), []).append((crop, probability))
        report.outcomes = [
            outcome if isinstance(outcome, RequestError) else self._result(i, outcome, scores, found)
            for i, outcome in enumerate(decoded)
        ]
        return report

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Fake probability of each uint8 crop (N, S, S, 3), in forward passes of bounded size."""
        chunk = self.settings.max_crops_per_forward
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(crops), chunk):
                batch = torch.from_numpy(np.ascontiguousarray(crops[start : start + chunk]))
                if self.device.type == "cuda":
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                logits = self.runtime(normalize(batch, self.config.mean, self.config.std))
                outputs.append(self.model.fake_probability(logits).float().cpu())
        return torch.cat(outputs).numpy()

    def warm_up(self) -> float:
        """Detection and classification once on a blank frame; returns the seconds it took.

        The first pass pays one-time costs (CUDA context and kernels, ONNX Runtime's and oneDNN's first-run
        setup) that would otherwise fall on the first request a worker serves after reporting READY. On a GPU
        the classification runs on a full chunk, the largest forward the worker will see.
        """
        started = time.perf_counter()
        self.face_detector.warm_up()
        crops = self.settings.max_crops_per_forward if self.device.type == "cuda" else 1
        size = self.config.input_size
        self.classify(np.zeros((crops, size, size, 3), dtype=np.uint8))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def _decode(self, body: bytes, sampling: Sampling | None = None) -> DecodedMedia | RequestError:
        """One body's frames, or the error it earns; a decoder failure nobody foresaw is that request's 500
        (logged with its traceback), never the batch's."""
        try:
            return decode_media(body, self.settings, self._check_size, sampling)
        except RequestError as error:
            return error
        except Exception as error:  # a decoder bug must not fail the other requests of the batch
            logger.exception("decoding a %d-byte body failed unexpectedly", len(body))
            return RequestError("decode_failed", f"the body could not be decoded: {type(error).__name__}", 500)

    def _plan_crops(self, request: int, frame: int, image: np.ndarray, faces: list[Face]) -> Iterator[_Crop]:
        """Where to crop: around every face, or the centre when there is none."""
        height, width = image.shape[:2]
        if not faces:
            yield _Crop(request, frame, None, center_region(width, height))
            return
        for face in faces:
            yield _Crop(request, frame, face, face_region(face.box, width, height, self.config.face_margin))

    def _result(
        self, request: int, m: DecodedMedia, scores: dict[tuple[int, int], list[tuple[_Crop, float]]],
        found: dict[tuple[int, int], FrameFaces],
    ) -> Verdict:
        scored = [scores[(request, position)] for position in range(len(m.frames))]
        frames = []
        for position, index in enumerate(m.frame_indices):
            faces = [FaceScore.reported(crop.face.box, crop.face.probability, p)  # type: ignore[union-attr]
                     for crop, p in scored[position] if crop.face is not None]
            center = next((p for crop, p in scored[position] if crop.face is None), None)
            search = found[(request, position)]
            frames.append(FrameScore.scored(index, faces, center, search.search, search.left_out,
                                            m.frame_times[position] if m.kind == "video" else None))
        media = MediaInfo(m.kind, m.format, m.width, m.height, m.total_frames, m.fps)
        settings = self.settings
        if m.kind == "image":
            return Verdict.of_image(frames[0], settings.threshold, media, self.model_info)
        coverage = Coverage(round(m.duration_s, TIME_DECIMALS), m.total_frames or len(frames), m.samples_moved,
                            m.samples_left_out)
        return Verdict.of_video(relink_tracks(frames), settings.threshold, media, self.model_info,
                                m.sampling or settings.default_sampling, settings.aggregation,
                                settings.min_track_frames, coverage)


@contextlib.contextmanager
def _timed(report: BatchReport, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        report.stage_seconds[stage] += time.perf_counter() - start
