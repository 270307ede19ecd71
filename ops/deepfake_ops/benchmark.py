"""Throughput of the detector, in-process and served, on the same inputs in one run.

    deepfake-benchmark            # `make benchmark`
    deepfake-benchmark --quick    # fewer repetitions, shorter Locust runs, one forward runtime
    deepfake-benchmark --sweep    # also serve 1080p photos under several batchSize/delay/worker settings
    deepfake-benchmark --quick --only jobs   # one part alone (network, pipeline, served, coverage, jobs, limit)

Parts, all on the untrained seeded weights that `make mar` packs (speed does not depend on training):

(a) the network alone at several batch sizes: the pipeline's PyTorch forward (channels_last, uint8 crops
    normalised inside) and ONNX Runtime on an export of the same weights, against eager fp32 NCHW, each with
    its largest difference in fake probability;
(b) the whole pipeline in-process, as config/model-config.yaml configures it (forward runtime included), in
    one process using every core, stage by stage (decode, detect, crop, forward) on the real face photos at
    480p, 1080p and 4K and on the real face video, in batches of the served ``batchSize``, against a plain
    reference (Pillow decode, facenet-pytorch MTCNN with its defaults on a copy downscaled to 640 px, eager
    fp32 NCHW forward at batch 1), plus the faces each finds and the cost of video strides 1 and 10; without
    --quick also with the other forward runtime. Sizes, reference and runtimes are timed in turns, one
    sample of each per round (median of the rounds), so that drift of the machine's speed shifts them alike;
(c) the same inputs, and 224 px face crops of the photos, served by a private TorchServe (an archive built by
    build_mar.build_archive from config/model-config.yaml) at saturation, driven by Locust;
(d) whole-input coverage: a 32-frame verdict on a 10-minute 720p video against a 10 s one, the ways to seek,
    the face search before and after;
(f) near the limit (``bench_limit``): the face search's share of a photo's cost under facenet-pytorch's
    MTCNN.detect, the product's arrangement with PyTorch's networks and with OpenVINO's, with the parity of
    their boxes; the int8 forward against fp32 (network alone, 1080p in-process, the shift on real face crops,
    the train-demo's held-out AUC and log loss); with (a) and (c), served 1080p photos and served face crops
    over the network alone (the configured forward at its best batch, timed right before and after each);
(e) the job path: the 10-minute 720p video (60 s with --quick) submitted as a job (a private TorchServe as in
    (c) behind a private job service: Redis, the Celery workers, the job API), submit to done, against the same
    sampling (every_seconds:5) scored in-process on the same frames, in turns; both must score the same frame
    indices.

It prints a markdown table ready for the README, the ratios served / in-process, in-process / reference,
per-image cost of 1080p and 4K over 480p, and stride 10 over stride 1, and writes the figures as JSON to
``reports/benchmark/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import psutil
import torch
import yaml
from deepfake_detector.architecture import DeepfakeDetector
from deepfake_detector.archive import DEFAULT_MODEL_NAME, ONNX_FILE, WEIGHTS_FILE
from deepfake_detector.config import PipelineSettings
from deepfake_detector.cpu_tuning import available_cpus, keep_freed_memory, threads_per_worker, use_cpu_threads
from deepfake_detector.media import decode_media
from deepfake_detector.pipeline import DetectionPipeline
from deepfake_detector.runtimes import OnnxRuntimeForward
from deepfake_detector.sampling import Sampling, parse_sampling
from deepfake_detector.transforms import crop_and_resize, face_region, normalize
from deepfake_detector.untrained import build_detector
from deepfake_detector.verdict import Verdict
from deepfake_detector.weights import load_weights, save_weights
from deepfake_jobs.client import JobClient
from deepfake_jobs.settings import JobSettings
from facenet_pytorch import MTCNN
from PIL import Image

from . import bench_limit, face_recall, load_media, seeking
from .build_mar import DEFAULT_SERVING_CONFIG, build_archive
from .load_media import DEFAULT_MEDIA_DIR, FACE_CROP, LoadMedia, make_load_media, resize_photo
from .loadtest import JobService, run_locust, start_private_jobs, start_private_server, warm_up
from .packaged import CHELSEA
from .paths import REPORTS
from .timing import Timing, interleaved_timings, median_timing, paired_ratio
from .torchserve import ServerError, cpu_seconds, server_processes

REPORT_DIR = REPORTS / "benchmark"
MODEL_NAME = DEFAULT_MODEL_NAME
IMAGE_SIZES = bench_limit.IMAGE_SIZES
SERVED_PHOTOS = (*IMAGE_SIZES, FACE_CROP)
AGAINST_NETWORK_ALONE = {"1080p": "1080p photos", FACE_CROP: "224 px face crops"}
"""The served runs timed against the configured forward alone, right before and after each, and their labels:
1080p photos (the issue's target) and 224 px face crops (what serving adds when there is almost nothing to
find or cut)."""
REFERENCE_DETECT_SIDE = 640
SECTIONS = ("network", "pipeline", "served", "coverage", "jobs", "limit")


@dataclass
class Results:
    machine: dict[str, Any]
    settings: dict[str, Any]
    network: list[dict[str, Any]] = field(default_factory=list)
    pipeline: dict[str, dict[str, Any]] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    video_stride: dict[str, Any] = field(default_factory=dict)
    long_video: dict[str, Any] = field(default_factory=dict)
    seeking: list[dict[str, Any]] = field(default_factory=list)
    face_search: dict[str, Any] = field(default_factory=dict)
    freed_memory: dict[str, dict[str, float]] = field(default_factory=dict)
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    worker_stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- the straightforward reference


class ReferencePipeline:
    """The baseline the issue names: Pillow decode, MTCNN defaults on a 640 px copy, eager fp32 NCHW at batch 1."""

    def __init__(self, model: DeepfakeDetector, settings: PipelineSettings) -> None:
        self.model = model.eval()
        self.settings = settings
        self.mtcnn = MTCNN(keep_all=True, device="cpu")
        self.config = model.config

    def decode(self, body: bytes) -> np.ndarray:
        import io

        with Image.open(io.BytesIO(body)) as image:
            return np.asarray(image.convert("RGB"))

    def detect(self, frame: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        height, width = frame.shape[:2]
        scale = min(1.0, REFERENCE_DETECT_SIDE / max(width, height))
        small = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        boxes, probabilities = self.mtcnn.detect(small)
        faces = []
        for box, probability in zip(boxes if boxes is not None else [], probabilities if boxes is not None else []):
            if probability >= self.settings.min_face_probability:
                faces.append((tuple(float(v) / scale for v in box), float(probability)))
        faces.sort(key=lambda face: -face[1])
        return faces[: self.settings.max_faces_per_frame]

    def crops(self, frame: np.ndarray, faces: list) -> list[np.ndarray]:
        height, width = frame.shape[:2]
        return [crop_and_resize(frame, face_region(box, width, height, self.model.config.face_margin),
                                self.config.input_size) for box, _ in faces]

    def forward(self, crops: list[np.ndarray]) -> list[float]:
        probabilities = []
        with torch.inference_mode():
            for crop in crops:
                images = normalize(torch.from_numpy(crop[None]), self.config.mean, self.config.std).contiguous()
                probabilities.append(float(self.model.fake_probability(self.model(images))[0]))
        return probabilities

    def timed_batch(self, bodies: list[bytes]) -> dict[str, float]:
        """Seconds by stage for the bodies one after another, as the reference serves them."""
        total: dict[str, float] = {}
        for body in bodies:
            for stage, seconds in self.timed(body).items():
                total[stage] = total.get(stage, 0.0) + seconds
        return total

    def timed(self, body: bytes) -> dict[str, float]:
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        frame = self.decode(body)
        seconds["decode"] = time.perf_counter() - (start)
        mark = time.perf_counter()
        faces = self.detect(frame)
        seconds["detect"] = time.perf_counter() - mark
        mark = time.perf_counter()
        crops = self.crops(frame, faces)
        seconds["crop"] = time.perf_counter() - mark
        mark = time.perf_counter()
        self.forward(crops)
        seconds["forward"] = time.perf_counter() - mark
        return seconds


# ---------------------------------------------------------------- (a) the network alone


def bench_network(pipeline: DetectionPipeline, reference: DeepfakeDetector, batch_sizes: list[int],
                  repeats: int, onnx_forward: OnnxRuntimeForward | None = None) -> list[dict[str, Any]]:
    config = pipeline.config
    generator = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        crops = generator.integers(0, 256, (batch, config.input_size, config.input_size, 3), dtype=np.uint8)

        def ours(crops: np.ndarray = crops) -> dict[str, float]:
            start = time.perf_counter()
            pipeline.classify(crops)
            return {"forward": time.perf_counter() - start}

        def eager(crops: np.ndarray = crops) -> dict[str, float]:
            start = time.perf_counter()
            with torch.inference_mode():
                images = normalize(torch.from_numpy(crops), config.mean, config.std).contiguous()
                reference.fake_probability(reference(images))
            return {"forward": time.perf_counter() - start}

        fast, slow = median_timing(ours, batch, repeats), median_timing(eager, batch, repeats)
        with torch.inference_mode():
            images = normalize(torch.from_numpy(crops), config.mean, config.std).contiguous()
            expected = reference.fake_probability(reference(images)).numpy()
        difference = float(np.abs(pipeline.classify(crops) - expected).max())
        row = {"batch": batch, "pipeline_img_s": fast.per_second, "eager_nchw_img_s": slow.per_second,
               "max_abs_prob_diff": difference}
        if onnx_forward is not None:

            def ort(images: torch.Tensor = images) -> dict[str, float]:
                start = time.perf_counter()
                onnx_forward(images)
                return {"forward": time.perf_counter() - start}

            row["onnxruntime_img_s"] = median_timing(ort, batch, repeats).per_second
            probabilities = reference.fake_probability(onnx_forward(images)).numpy()
            row["onnxruntime_max_abs_prob_diff"] = float(np.abs(probabilities - expected).max())
        rows.append(row)
        print(f"  network batch {batch:>2}: pipeline {fast.per_second:6.1f} img/s, eager NCHW "
              f"{slow.per_second:6.1f} img/s, max |dp| {difference:.1e}"
              + (f"; onnxruntime {row['onnxruntime_img_s']:6.1f} img/s, max |dp| "
                 f"{row['onnxruntime_max_abs_prob_diff']:.1e}" if onnx_forward is not None else ""), flush=True)
    return rows


def onnx_forward_for(model: DeepfakeDetector, folder: Path, threads: int) -> OnnxRuntimeForward | None:
    """ONNX Runtime on a fresh export of ``model``, or None when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("  (onnxruntime is not installed: its column is left out)")
        return None
    path = folder / ONNX_FILE
    path.unlink(missing_ok=True)  # always the weights measured in this run
    return OnnxRuntimeForward(model, path, threads)


# ---------------------------------------------------------------- (b) the pipeline in-process


def bench_pipeline(pipeline: DetectionPipeline, reference: ReferencePipeline, media: LoadMedia, batch: int,
                   repeats: int, alternative: DetectionPipeline | None = None) -> dict[str, dict[str, Any]]:
    """``alternative``: the same pipeline with the other forward runtime; when given, the photos are also timed
    with it, for comparison."""
    runs: dict[str, tuple[Callable[[], dict[str, float]], int]] = {}
    for size in IMAGE_SIZES:
        batch_bodies = media.request_batch(size, batch)
        runs[f"{size} ours"] = (lambda b=batch_bodies: pipeline.score_batch(b).stage_seconds, batch)
        runs[f"{size} reference"] = (lambda b=batch_bodies: reference.timed_batch(b), batch)
        if alternative is not None:
            runs[f"{size} other forward"] = (lambda b=batch_bodies: alternative.score_batch(b).stage_seconds, batch)
    timings = interleaved_timings(runs, repeats)
    results: dict[str, dict[str, Any]] = {}
    for size in IMAGE_SIZES:
        ours, base = timings[f"{size} ours"], timings[f"{size} reference"]
        results[size] = {"kind": "image", "pipeline": ours.__dict__ | {"per_s": ours.per_second},
                         "reference": base.__dict__ | {"per_s": base.per_second},
                         "speedup": ours.per_second / base.per_second}
        print(f"  {size:>6}: pipeline {ours.ms_per_item:6.1f} ms/img {_stages(ours)}; reference "
              f"{base.ms_per_item:6.1f} ms/img {_stages(base)}; x{ours.per_second / base.per_second:.2f}", flush=True)
        if alternative is not None:
            other = timings[f"{size} other forward"]
            results[size]["pipeline_other_forward"] = other.__dict__ | {"per_s": other.per_second}
            print(f"          same pipeline, {alternative.settings.forward} forward: {other.ms_per_item:6.1f} ms/img "
                  f"{_stages(other)}", flush=True)
    video = media.videos["carphone"].read_bytes()
    video_batch = [video] * max(1, batch // 4)
    ours = median_timing(lambda: pipeline.score_batch(video_batch).stage_seconds, len(video_batch), repeats)
    frames = len(pipeline.score(video).frames)
    results["video"] = {"kind": "video", "frames_per_request": frames,
                        "pipeline": ours.__dict__ | {"per_s": ours.per_second}}
    print(f"  video carphone ({frames} frames): pipeline {ours.ms_per_item:6.1f} ms/request {_stages(ours)}",
          flush=True)
    return results


def _stages(timing: Timing) -> str:
    return "(" + ", ".join(f"{k} {v:.1f}" for k, v in timing.stages_ms.items()) + ")"


def compare_quality(pipeline: DetectionPipeline, reference: ReferencePipeline, media: LoadMedia) -> dict[str, Any]:
    """Faces found by both, largest box difference (px), and largest fake-probability difference on the same crops."""
    worst_box, worst_prob, mismatches = 0.0, 0.0, []
    bodies = {f"{name}_{size}": path.read_bytes()
              for name, sizes in media.photos.items() for size, path in sizes.items()}
    for label, body in bodies.items():
        frame = reference.decode(body)
        ours = pipeline.face_detector.detect([frame])[0].faces
        theirs = reference.detect(frame)
        if len(ours) != len(theirs):
            mismatches.append(f"{label}: {len(ours)} faces vs reference {len(theirs)}")
            continue
        # In pixels of the 640 px detection copy, where both detectors look for faces.
        to_copy = min(1.0, REFERENCE_DETECT_SIDE / max(frame.shape[:2]))
        for face, (box, _) in zip(ours, theirs):
            worst_box = max(worst_box, to_copy * max(abs(a - b) for a, b in zip(face.box, box)))
        crops = np.stack(reference.crops(frame, theirs)) if theirs else None
        if crops is not None:
            expected = np.array(reference.forward(list(crops)))
            worst_prob = max(worst_prob, float(np.abs(pipeline.classify(crops) - expected).max()))
    video = pipeline.score(media.videos["carphone"].read_bytes())
    video_faces = sum(frame.face_detected for frame in video.frames)
    return {"max_box_diff_px": worst_box, "max_prob_diff": worst_prob, "mismatches": mismatches,
            "video_frames_with_face": f"{video_faces}/{len(video.frames)}"}


def variant(pipeline: DetectionPipeline, **changes: Any) -> DetectionPipeline:
    """The same network and forward runtime with other settings (``pipeline`` itself when nothing changes)."""
    settings = pipeline.settings.replace(**changes)
    if settings == pipeline.settings:
        return pipeline
    onnx_file = getattr(pipeline.runtime, "path", None)  # the ONNX Runtime export, when that runs
    return DetectionPipeline(pipeline.model, settings, onnx_file=onnx_file)


def bench_video_stride(pipeline: DetectionPipeline, media: LoadMedia, repeats: int) -> dict[str, Any]:
    """The carphone video scored at stride 1 and stride 10, every sampled frame (no max_frames cap)."""
    body = media.videos["carphone"].read_bytes()
    costs = {}
    for stride in (1, 10):
        strided = variant(pipeline, sampling=f"every_nth:{stride}", max_frames=100_000)
        costs[stride] = median_timing(lambda p=strided: p.score_batch([body]).stage_seconds, 1, repeats)
    ratio = costs[10].ms_per_item / costs[1].ms_per_item
    print(f"  video stride 1: {costs[1].ms_per_item:.0f} ms, stride 10: {costs[10].ms_per_item:.0f} ms "
          f"(ratio {ratio:.3f})", flush=True)
    return {"stride_1_ms": costs[1].ms_per_item, "stride_10_ms": costs[10].ms_per_item, "ratio": ratio,
            "stride_1_stages_ms": costs[1].stages_ms, "stride_10_stages_ms": costs[10].stages_ms}


# ---------------------------------------------------------------- (d) whole-input coverage

BEFORE_COVERAGE = {"detect_max_side": 480, "min_face_fraction": 0.0, "max_faces_per_frame": 4,
                   "second_look_max_pixels": 0}
"""The face search as it was before whole-input coverage: a copy at most 480 px long searched from 24 px, the
four most confident faces, no second look."""
FACELESS_HEIGHTS = {"480p": 480, "1080p": 1080, "4k": 2160}


def bench_long_video(pipeline: DetectionPipeline, media_dir: Path, repeats: int) -> dict[str, Any]:
    """A 32-frame verdict (uniform:32) on a 10 s 720p H.264 clip and on a 10-minute one, in the same rounds.

    The 10-minute file (156 MB) is over the served ``max_bytes`` (64 MiB), so this in-process run raises it:
    what is measured is the cost of covering the whole length, not the upload limit.
    """
    roomy = variant(pipeline, max_bytes=1 << 30)
    bodies = {name: load_media.long_video(media_dir, seconds).read_bytes() for name, seconds in (("10 s", 10),
                                                                                             ("10 min", 600))}
    timings = interleaved_timings({name: (lambda b=body: roomy.score_batch([b]).stage_seconds, 1)
                                   for name, body in bodies.items()}, repeats)
    moved = {name: decode_media(body, roomy.settings).samples_moved for name, body in bodies.items()}
    ratio, low, high = paired_ratio(timings["10 min"].rounds_ms, timings["10 s"].rounds_ms)
    print(f"  32-frame verdict: 10 s {timings['10 s'].ms_per_item:.0f} ms {_stages(timings['10 s'])}, 10 min "
          f"{timings['10 min'].ms_per_item:.0f} ms {_stages(timings['10 min'])} (x{ratio:.2f}; samples moved to a "
          f"cheaper frame {moved['10 s']} and {moved['10 min']} of 32)", flush=True)
    return {name: timing.__dict__ | {"samples_moved": moved[name]} for name, timing in timings.items()} | {
        "ratio": ratio, "ratio_lowest": low, "ratio_highest": high}


def bench_seeking_methods(media_dir: Path, repeats: int) -> list[dict[str, Any]]:
    """Decode cost per sampled frame of each way to fetch 32 frames spread over the 10 s and 10-minute clips
    (``seeking``), and the product's own plan (``decode_media``, uniform:32) beside them."""
    rows = []
    settings = PipelineSettings(max_bytes=1 << 30)
    for name, seconds in (("10 s", 10), ("10 min", 600)):
        video = load_media.long_video(media_dir, seconds)
        body = video.read_bytes()
        measured = seeking.measure_seeking(video, samples=32, repeats=repeats)
        plan_s = statistics.median(_seconds_of(lambda b=body: decode_media(b, settings)) for _ in range(repeats))
        rows += [result.__dict__ | {"video": name} for result in measured]
        rows.append({"video": name, "method": "product (uniform:32 plan)", "seconds_per_frame": plan_s / 32})
    for row in rows:
        print(f"  decode {row['video']:>6} {row['method']:<26} {1000 * row['seconds_per_frame']:7.1f} ms/frame",
              flush=True)
    return rows


def _seconds_of(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_face_search(pipeline: DetectionPipeline, media: LoadMedia, batch: int, repeats: int) -> dict[str, Any]:
    """The face photos (and the group photo) before and after the new face search, in the same rounds; the
    second look's cost on faceless photos (the cat, at 480p, 1080p and 4K); face recall of both searches
    against facenet-pytorch's MTCNN at full resolution on every photo and frame the benchmark uses."""
    before = variant(pipeline, **BEFORE_COVERAGE)
    no_second_look = variant(pipeline, second_look_max_pixels=0)
    runs: dict[str, tuple[Callable[[], dict[str, float]], int]] = {}
    for size in IMAGE_SIZES:
        batch_bodies = media.request_batch(size, batch)
        runs[f"{size} after"] = (lambda b=batch_bodies: pipeline.score_batch(b).stage_seconds, batch)
        runs[f"{size} before"] = (lambda b=batch_bodies: before.score_batch(b).stage_seconds, batch)
    group = [media.group_photo.read_bytes()]
    runs["group after"] = (lambda: pipeline.score_batch(group).stage_seconds, 1)
    runs["group before"] = (lambda: before.score_batch(group).stage_seconds, 1)
    for size, height in FACELESS_HEIGHTS.items():
        body = [_jpeg(resize_photo(CHELSEA.locate(), height))]
        runs[f"faceless {size} second look"] = (lambda b=body: pipeline.score_batch(b).stage_seconds, 1)
        runs[f"faceless {size} first only"] = (lambda b=body: no_second_look.score_batch(b).stage_seconds, 1)
    timings = interleaved_timings(runs, repeats)
    result: dict[str, Any] = {"timings": {name: timing.__dict__ for name, timing in timings.items()}}
    for size in (*IMAGE_SIZES, "group"):
        ratio, low, high = paired_ratio(timings[f"{size} after"].rounds_ms, timings[f"{size} before"].rounds_ms)
        result[f"face_photo_{size}"] = {"ratio": ratio, "lowest": low, "highest": high}
        print(f"  {size:>6} face photo: before {timings[f'{size} before'].ms_per_item:.1f} ms, after "
              f"{timings[f'{size} after'].ms_per_item:.1f} ms (x{ratio:.2f})", flush=True)
    for size in FACELESS_HEIGHTS:
        ratio, low, high = paired_ratio(timings[f"faceless {size} second look"].rounds_ms,
                                        timings[f"faceless {size} first only"].rounds_ms)
        result[f"second_look_{size}"] = {"ratio": ratio, "lowest": low, "highest": high,
                                         "ms": timings[f"faceless {size} second look"].ms_per_item}
        print(f"  faceless {size}: second look x{ratio:.2f} "
              f"({timings[f'faceless {size} second look'].ms_per_item:.0f} ms)", flush=True)
    images = face_recall.recall_media()
    for name, detector in (("after", pipeline.face_detector), ("before", before.face_detector)):
        report = face_recall.measure_recall(
            images, lambda frames, d=detector: [[face.box for face in found.faces] for found in d.detect(frames)])
        result[f"recall_{name}"] = {"recall": report.recall, "reference_faces": report.reference_faces,
                                    "found": report.found, "images": report.images,
                                    "missed": [name for name, _ in report.missed]}
        print(f"  face recall {name}: {report.found}/{report.reference_faces} = {report.recall:.3f} on "
              f"{report.images} photos and frames (missed: {sorted({n for n, _ in report.missed})})", flush=True)
    return result


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# Decodes photos in a fresh process with freed memory kept up to argv[1] MB (0: glibc's defaults) and prints,
# as JSON, the median ms per photo of argv[2] rounds for each size of the {size: [paths]} in argv[3].
_DECODE_PROBE = """
import json, statistics, sys, time
from pathlib import Path
from deepfake_detector import PipelineSettings
from deepfake_detector.media import decode_media
from deepfake_detector.cpu_tuning import keep_freed_memory, use_cpu_threads
use_cpu_threads(1)
keep_freed_memory(int(sys.argv[1]))
settings, medians = PipelineSettings(), {}
for size, paths in json.loads(sys.argv[3]).items():
    bodies, rounds = [Path(p).read_bytes() for p in paths], []
    for round_number in range(int(sys.argv[2]) + 1):
        started = time.perf_counter()
        for body in bodies:
            decode_media(body, settings)
        if round_number:
            rounds.append((time.perf_counter() - started) / len(bodies))
    medians[size] = statistics.median(rounds) * 1e3
print(json.dumps(medians))
"""


def bench_freed_memory(media: LoadMedia, megabytes: int, repeats: int) -> dict[str, dict[str, float]]:
    """Decoding the photos in fresh processes, glibc's defaults against freed memory kept, in turns."""
    photos = json.dumps({size: [str(p) for p in media.photos_of_size(size)] for size in IMAGE_SIZES})
    samples: dict[int, list[dict[str, float]]] = {0: [], megabytes: []}
    for _ in range(3):
        for setting, runs in samples.items():
            probe = [sys.executable, "-c", _DECODE_PROBE, str(setting), str(4 * repeats), photos]
            runs.append(json.loads(subprocess.run(probe, check=True, capture_output=True, text=True).stdout))
    results: dict[str, dict[str, float]] = {}
    for size in IMAGE_SIZES:
        default_ms = statistics.median(run[size] for run in samples[0])
        kept_ms = statistics.median(run[size] for run in samples[megabytes])
        results[size] = {"glibc_default_ms": default_ms, "kept_ms": kept_ms, "ratio": kept_ms / default_ms}
        print(f"  decode {size:>5}: glibc defaults {default_ms:5.1f} ms, freed memory kept {kept_ms:5.1f} ms "
              f"(x{kept_ms / default_ms:.2f})", flush=True)
    return results


# ---------------------------------------------------------------- (c) served


def bench_served(archive: Path, run_dir: Path, media: LoadMedia, users: int, run_time: str,
                 label: str = "served", network_alone: Callable[[], float] | None = None) -> dict[str, dict[str, Any]]:
    """Each input at saturation: the photo sizes, the face crops, the video. ``network_alone`` (images/s of the
    configured forward, timed in-process now) is taken right before and right after each run of
    ``AGAINST_NETWORK_ALONE``, while the workers idle: the machine's speed drifts over the minutes of a
    benchmark, and served over the network alone compares the two. Each run also says where the machine's
    cores went (:func:`machine_time`)."""
    instance = start_private_server(run_dir, archive)
    results: dict[str, dict[str, Any]] = {}
    try:
        for size in SERVED_PHOTOS:
            warm_up(instance, MODEL_NAME, None, media.photos_of_size(size)[0].read_bytes(), count=1)
        warm_up(instance, MODEL_NAME, None, media.videos["carphone"].read_bytes(), count=1)
        token = instance.keys()["inference"]
        leader = instance.pid()
        if leader is None:
            raise ServerError(f"the benchmark's TorchServe exited after its warm-up; see {run_dir}/torchserve.out")
        roles = server_processes(leader)  # after the warm-up every worker is up
        cases = [(size, "ImageUser", {"DFD_IMAGE_SIZES": size}) for size in SERVED_PHOTOS]
        cases.append(("video", "VideoUser", {"DFD_VIDEOS": "carphone"}))
        for name, user_class, env in cases:
            # A video request holds a dozen frames: half the users still keep a full batch queued for every
            # worker (fewer let one worker take them all while the other idles), and twice the run time
            # holds several of those long batches.
            video = name == "video"
            alone = [network_alone()] if network_alone is not None and name in AGAINST_NETWORK_ALONE else []
            before = {role: cpu_seconds(members) for role, members in roles.items()}
            started = time.perf_counter()
            summary = run_locust(instance.inference_url, token, run_dir / "locust" / name, user_class,
                                 max(2, users // 2) if video else users,
                                 f"{2 * _seconds(run_time)}s" if video else run_time, extra_env=env)
            used = {f"{role}_s": cpu_seconds(members) - before[role] for role, members in roles.items()}
            cpu = {"wall_s": time.perf_counter() - started, "cpus": available_cpus(),
                   "load_generator_s": summary.load_generator_cpu_s or 0.0, **used}
            # Before the next reading: the last batches Locust stopped waiting for, if any, are done.
            _wait_until_idle(roles["workers"])
            results[name] = summary.as_dict() | {"cpu": cpu}
            print(f"  {label} {name:>6}: {summary.line()}", flush=True)
            print(f"  {'':>{len(label) + 7}} cores over the run: " + ", ".join(
                f"{role} {100 * share:.0f}%" for role, share in machine_time(cpu).items()), flush=True)
            if alone:
                alone.append(network_alone())
                results[name]["network_alone_img_s"] = alone
                ratio = summary.steady_requests_per_s / statistics.mean(alone)
                print(f"  network alone before and after it: {alone[0]:.1f} and {alone[1]:.1f} img/s (served over "
                      f"network alone {ratio:.2f})", flush=True)
    finally:
        instance.stop()
    return results


def _wait_until_idle(processes: list[psutil.Process], timeout_s: float = 60.0) -> None:
    """Until the processes use less than a tenth of a core over half a second (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    used = cpu_seconds(processes)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(processes)
        if now - used < 0.05:
            return
        used = now


def bench_worker_stages(weights: Path, settings: PipelineSettings, onnx_file: Path | None, media: LoadMedia,
                        batch: int, repeats: int, threads: int) -> dict[str, dict[str, Any]]:
    """Stage ms per image of ``AGAINST_NETWORK_ALONE``'s inputs on ``threads`` threads, as each served worker
    runs them (its own pipeline, built under those threads: decoding, OpenVINO and ONNX Runtime included), in
    batches of ``batch``, in the same rounds."""
    torch_threads, opencv_threads = torch.get_num_threads(), cv2.getNumThreads()
    use_cpu_threads(threads)
    try:
        worker = DetectionPipeline.from_weights(weights, settings, version="bench", onnx_file=onnx_file)
        worker.face_detector.warm_up()
        runs: dict[str, tuple[Callable[[], dict[str, float]], int]] = {}
        for size in AGAINST_NETWORK_ALONE:
            batch_bodies = media.request_batch(size, batch)
            runs[size] = (lambda b=batch_bodies: worker.score_batch(b).stage_seconds, batch)
        timings = interleaved_timings(runs, repeats)
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(opencv_threads)
    for size, timing in timings.items():
        print(f"  one worker, {threads} thread(s), {size:>5}: {timing.ms_per_item:.1f} ms per image {_stages(timing)}",
              flush=True)
    return {size: {"ms_per_image": timing.ms_per_item, "stages_ms": timing.stages_ms}
            for size, timing in timings.items()}


def machine_time(cpu: dict[str, float]) -> dict[str, float]:
    """Shares of the machine's core-seconds over a served run: the workers, TorchServe's frontend, Locust, and
    the rest (idle, and everything else on the machine)."""
    total = cpu["wall_s"] * cpu["cpus"]
    shares = {role: cpu[f"{key}_s"] / total for role, key in
              (("workers", "workers"), ("frontend", "frontend"), ("Locust", "load_generator"))}
    return shares | {"rest": 1.0 - sum(shares.values())}


def _seconds(run_time: str) -> int:
    """Locust's run time ("30s", "2m", "1h") in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    return int(run_time[:-1]) * units[run_time[-1]] if run_time[-1] in units else int(run_time)


def sweep_configs(quick: bool) -> list[dict[str, Any]]:
    """TorchServe batching, worker count and forward runtime around the shipped defaults (8, 50 ms, 2, ORT)."""
    grid = [(1, 0, 2, "onnxruntime"), (4, 20, 2, "onnxruntime"), (8, 50, 2, "onnxruntime"),
            (16, 100, 2, "onnxruntime"), (8, 50, 1, "onnxruntime"), (8, 50, 2, "torch"), (8, 50, 1, "torch")]
    return [{"batchSize": b, "maxBatchDelay": d, "minWorkers": w, "maxWorkers": w, "forward": f}
            for b, d, w, f in grid[: 3 if quick else None]]


def other_forward(results: Results) -> str:
    return "torch" if results.settings.get("forward") == "onnxruntime" else "onnxruntime"


# ---------------------------------------------------------------- (e) the job path

JOB_SAMPLING = "every_seconds:5"
JOB_POLL_S = 0.2


def bench_jobs(archive: Path, run_dir: Path, pipeline: DetectionPipeline, media_dir: Path, seconds: float,
               repeats: int) -> dict[str, Any]:
    """A ``seconds``-long 720p video through the job path, submit to done, and in-process on the same sampling,
    in turns (after one 10 s video through each, so that neither pays first-call costs).

    In-process is ``pipeline`` (the served settings, one process with every core) with the job's planning
    limits: no cap on samples or decoded frames and the job's ``max_decode_per_sample``, so that it scores the
    frames the job plans; it is checked that both scored the same frame indices.
    """
    planning = JobSettings.from_env()  # DEEPFAKE_JOBS_WORKERS, _PIECE_SAMPLES, ... as `make jobs` reads them
    local = variant(pipeline, max_frames=planning.max_samples, max_decoded_frames=10**9, max_bytes=1 << 30,
                    max_video_seconds=planning.max_video_seconds, max_video_frames=planning.max_video_frames,
                    max_decode_per_sample=planning.max_decode_per_sample)
    sampling = parse_sampling(JOB_SAMPLING)
    video, warm = load_media.long_video(media_dir, seconds), load_media.long_video(media_dir, 10)
    instance = start_private_server(run_dir / "torchserve", archive)
    service: JobService | None = None
    try:
        service = start_private_jobs(run_dir / "jobs", instance, MODEL_NAME, workers=planning.workers,
                                     piece_samples=planning.piece_samples, max_piece_bytes=planning.max_piece_bytes)
        _job_through(service, warm)
        _in_process(local, warm.read_bytes(), sampling)
        body = video.read_bytes()
        jobs, local_runs = [], []
        for _ in range(repeats):
            jobs.append(_job_through(service, video))
            local_runs.append(_in_process(local, body, sampling))
    finally:
        if service is not None:
            service.stop()
        instance.stop()
    served, scored = jobs[-1]["verdict"], local_runs[-1]["verdict"]
    for run in (*jobs, *local_runs):
        if run["verdict"].sampled_frame_indices != scored.sampled_frame_indices:
            raise AssertionError(f"the job path and in-process scored different frames: "
                                 f"{run['verdict'].sampled_frame_indices} != {scored.sampled_frame_indices}")
    frames = len(scored.sampled_frame_indices)
    job_s, local_s = [run["seconds"] for run in jobs], [run["seconds"] for run in local_runs]
    # job fps / in-process fps on the same frames is in-process seconds / job seconds, round by round.
    ratio, low, high = paired_ratio(local_s, job_s)
    difference = max((abs(a.fake_probability - b.fake_probability) for a, b in zip(served.frames, scored.frames)),
                     default=0.0)
    result = {
        "video": video.name, "video_seconds": seconds, "sampling": JOB_SAMPLING, "frames": frames,
        "workers": planning.workers, "piece_samples": planning.piece_samples,
        "job": {"rounds_s": job_s, "median_s": statistics.median(job_s), "fps": frames / statistics.median(job_s),
                "upload_s": [run["upload_s"] for run in jobs], "pieces": jobs[-1]["pieces"],
                "queued_to_end_s": [run["queued_to_end_s"] for run in jobs]},
        "in_process": {"rounds_s": local_s, "median_s": statistics.median(local_s),
                       "fps": frames / statistics.median(local_s)},
        "ratio": ratio, "ratio_lowest": low, "ratio_highest": high, "same_frames": True,
        "max_abs_prob_diff": difference,
    }
    print(f"  job path {video.name} ({JOB_SAMPLING}, {frames} frames, {jobs[-1]['pieces']} pieces): submit to done "
          f"{result['job']['median_s']:.1f} s = {result['job']['fps']:.2f} frames/s (upload and index "
          f"{statistics.median(result['job']['upload_s']):.1f} s); in-process {result['in_process']['median_s']:.1f} s "
          f"= {result['in_process']['fps']:.2f} frames/s; job / in-process x{ratio:.2f}; same frames; max |dp| "
          f"{difference:.1e}", flush=True)
    return result


def _job_through(service: JobService, video: Path, timeout_s: float = 3600.0) -> dict[str, Any]:
    """One job of ``video`` through the client users have (``deepfake_jobs.client``): seconds from the upload's
    start to the poll that saw it done, and its verdict."""
    client = JobClient(service.url, service.key)
    seen: dict[str, Any] = {}

    def on_progress(status: dict[str, Any]) -> None:
        seen.update(status=status, at=time.perf_counter())

    started = time.perf_counter()
    job_id = client.submit(video, sampling=JOB_SAMPLING)["id"]
    upload_s = time.perf_counter() - started
    answer = client.wait(job_id, on_progress, poll_s=JOB_POLL_S, timeout_s=timeout_s)
    status = seen["status"]
    return {"seconds": seen["at"] - started, "upload_s": upload_s,
            "queued_to_end_s": status["ended_at"] - status["queued_at"], "pieces": status["progress"]["pieces_total"],
            "verdict": Verdict.from_json(answer, "video")}


def _in_process(pipeline: DetectionPipeline, body: bytes, sampling: Sampling) -> dict[str, Any]:
    started = time.perf_counter()
    verdict = pipeline.score(body, sampling)
    return {"seconds": time.perf_counter() - started, "verdict": verdict}


# ---------------------------------------------------------------- report


def markdown(results: Results, command: str) -> str:
    nan = float("nan")
    settings = results.settings
    lines = [f"Command: `{command}` ({results.machine['when']}, {results.machine['cpus']} CPU cores, "
             f"{results.machine['gpu'] or 'no GPU'}; in-process: one process, {results.machine['torch_threads']} "
             f"threads; served: {settings['workers']} workers x {settings['threads_per_worker']} threads; forward "
             f"{settings['forward']}, batchSize {settings['batchSize']}, maxBatchDelay {settings['maxBatchDelay']} ms)"]
    if results.pipeline:  # absent when --only leaves part (b) out
        lines += ["", "| input | decode | detect | crop | forward | in-process /s | reference /s "
                  "| in-process / reference | served /s | p50 / p95 ms | served / in-process "
                  f"| in-process, {other_forward(results)} forward /s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.pipeline.items():
        stages = row["pipeline"]["stages_ms"]
        served = results.served.get(name, {})
        reference = row.get("reference")
        served_rate = served.get("steady_requests_per_s", float("nan"))
        lines.append(
            f"| {name if name != 'video' else 'video carphone (' + str(row['frames_per_request']) + ' frames)'} "
            + "".join(f"| {stages[s]:.1f} ms " for s in ("decode", "detect", "crop", "forward"))
            + f"| {row['pipeline']['per_s']:.2f} "
            + (f"| {reference['per_s']:.2f} | {row['speedup']:.2f} " if reference else "| - | - ")
            + f"| {served_rate:.2f} | {served.get('p50_ms', nan):.0f} / {served.get('p95_ms', nan):.0f} "
            + f"| {served_rate / row['pipeline']['per_s']:.2f} "
            + f"| {row.get('pipeline_other_forward', {}).get('per_s', nan):.2f} |")
    if results.pipeline:
        lines += ["", "Stage columns are in-process milliseconds per image (per request for the video)."]
    if results.network:
        lines += ["", "| network batch | pipeline forward img/s | eager fp32 NCHW img/s | max abs prob diff "
                  "| ONNX Runtime img/s | its max abs prob diff |",
                  "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['pipeline_img_s']:.1f} | {r['eager_nchw_img_s']:.1f} "
              f"| {r['max_abs_prob_diff']:.1e} | {r.get('onnxruntime_img_s', nan):.1f} "
              f"| {r.get('onnxruntime_max_abs_prob_diff', nan):.1e} |" for r in results.network]
    ratios = results.ratios
    lines += ["", "| check | measured | target |", "|---|---|---|"]
    for key, target in (("served_over_inprocess_480p", ">= 0.95"), ("served_over_inprocess_1080p", ">= 0.95"),
                        ("served_over_inprocess_4k", ">= 0.95"), ("inprocess_over_reference_480p", ">= 1.5"),
                        ("inprocess_over_reference_1080p", ">= 1.5"), ("cost_1080p_over_480p", "<= 1.3"),
                        ("cost_4k_over_480p", "<= 1.3"), ("video_stride10_over_stride1", "<= 0.25"),
                        ("verdict_10min_over_10s", "<= 1.5"), ("job_over_inprocess_fps", ">= 0.8"),
                        ("served_1080p_over_network_alone", ">= 0.7"), ("served_face_over_network_alone", "-"),
                        *((f"photo_cost_{size}_openvino_over_facenet", "-") for size in IMAGE_SIZES),
                        ("int8_over_fp32_network", "-"), ("int8_over_fp32_1080p_inprocess", "-"),
                        *((f"face_photo_{size}_after_over_before", "<= 1.15") for size in IMAGE_SIZES),
                        ("face_photo_group_after_over_before", "-"), ("face_recall", ">= 0.95"),
                        ("face_recall_before", "-"),
                        *((f"faceless_{size}_second_look_over_first_only", "-") for size in FACELESS_HEIGHTS)):
        if key in ratios:
            spread = (f" (rounds {ratios[key + '_lowest']:.2f}-{ratios[key + '_highest']:.2f})"
                      if key + "_lowest" in ratios else "")
            lines.append(f"| {key.replace('_', ' ')} | {ratios[key]:.2f}{spread} | {target} |")
    quality = results.quality
    if quality:
        lines += ["", f"Quality: same faces as the reference on every photo: {not quality['mismatches']} "
                  f"(largest box difference {quality['max_box_diff_px']:.1f} px of the 640 px detection copy; the "
                  f"reference searches from 20 px faces, the pipeline from min_face_size); largest fake-probability "
                  f"difference from eager fp32 on the same crops {quality['max_prob_diff']:.1e}; carphone frames "
                  f"with a face {quality['video_frames_with_face']}."]
    lines += limit_tables(results)
    if results.seeking:
        lines += ["", "| 32 frames spread over | method | ms per sampled frame | exact frames | largest time error s |",
                  "|---|---|---|---|---|"]
        for row in results.seeking:
            exact = f"{row['exact_frames']}/{row['samples']}" if "exact_frames" in row else "-"
            error = f"{row['max_time_error_s']:.2f}" if "max_time_error_s" in row else "-"
            lines.append(f"| {row['video']} | {row['method']} | {1000 * row['seconds_per_frame']:.1f} | {exact} "
                         f"| {error} |")
    if results.long_video:
        long, short = results.long_video["10 min"], results.long_video["10 s"]
        lines += ["", f"32-frame verdict (uniform:32), 720p H.264: 10 s clip {short['ms_per_item']:.0f} ms, "
                  f"10-minute video {long['ms_per_item']:.0f} ms; samples moved to a cheaper nearby frame: "
                  f"{short['samples_moved']} and {long['samples_moved']} of 32."]
    if results.jobs:
        jobs = results.jobs
        lines += ["", f"Job path ({jobs['workers']} Celery worker processes, pieces of {jobs['piece_samples']} "
                  f"samples, the served archive's TorchServe): {jobs['video']} (720p H.264), {jobs['sampling']}, "
                  f"{jobs['frames']} frames in {jobs['job']['pieces']} pieces: submit to done "
                  f"{jobs['job']['median_s']:.1f} s = {jobs['job']['fps']:.2f} frames/s (upload and index "
                  f"{statistics.median(jobs['job']['upload_s']):.1f} s of it); in-process on the same frames "
                  f"{jobs['in_process']['median_s']:.1f} s = {jobs['in_process']['fps']:.2f} frames/s; same frame "
                  f"indices: {'yes' if jobs['same_frames'] else 'no'}, largest fake-probability difference "
                  f"{jobs['max_abs_prob_diff']:.1e}."]
    if "recall_after" in results.face_search:
        after, before = results.face_search["recall_after"], results.face_search["recall_before"]
        lines += ["", f"Face recall against facenet-pytorch's MTCNN at full resolution (faces it finds with p >= 0.95, "
                  f"at least 40 px and 1/16 of the shorter side tall): {after['found']}/{after['reference_faces']} "
                  f"on {after['images']} photos and frames (missed: "
                  f"{', '.join(sorted(set(after['missed']))) or 'none'}); "
                  f"the search before: {before['found']}/{before['reference_faces']}."]
    if results.freed_memory:
        lines += ["", "Decoding alone, one thread, each in fresh processes: glibc's default allocator settings against "
                  "freed memory kept (`keep_freed_mb`): " + ", ".join(
                      f"{size} {row['glibc_default_ms']:.1f} -> {row['kept_ms']:.1f} ms (x{row['ratio']:.2f})"
                      for size, row in results.freed_memory.items()) + "."]
    if results.sweep:
        lines += ["", "| batchSize | maxBatchDelay ms | workers x threads | forward | 1080p served /s | p50 / p95 ms |",
                  "|---|---|---|---|---|---|"]
        for row in results.sweep:
            lines.append(f"| {row['batchSize']} | {row['maxBatchDelay']} | {row['minWorkers']} x "
                         f"{threads_per_worker(row['minWorkers'])} | {row['forward']} "
                         f"| {row['steady_requests_per_s']:.2f} | {row['p50_ms']:.0f} / {row['p95_ms']:.0f} |")
    return "\n".join(lines)


def limit_tables(results: Results) -> list[str]:
    """Part (f): the face search's share of a photo's cost under each search, and the int8 forward."""
    lines: list[str] = []
    measured = [(name, what) for name, what in AGAINST_NETWORK_ALONE.items()
                if results.served.get(name, {}).get("network_alone_img_s")]
    if measured:
        lines += ["", "| served | requests/s | network alone img/s (before, after) | served / network alone "
                  "| cores: workers / frontend / Locust / rest | workers core-ms per request "
                  "| network alone core-ms per image | one worker: decode / detect / crop / forward ms |",
                  "|---|---|---|---|---|---|---|---|"]
    for name, what in measured:
        served = results.served[name]
        around, rate, cpu = served["network_alone_img_s"], served["steady_requests_per_s"], served.get("cpu")
        alone = statistics.mean(around)
        shares = " / ".join(f"{100 * share:.0f}%" for share in machine_time(cpu).values()) if cpu else "-"
        per_request = f"{1e3 * cpu['workers_s'] / served['requests']:.0f}" if cpu else "-"
        stages = results.worker_stages.get(name, {}).get("stages_ms")
        one_thread = " / ".join(f"{stages[s]:.1f}" for s in ("decode", "detect", "crop", "forward")) if stages else "-"
        ratio = results.ratios.get(f"served_{name}_over_network_alone", rate / alone)
        lines.append(f"| {what} | {rate:.2f} | {alone:.1f} ({around[0]:.1f}, {around[1]:.1f}) | {ratio:.2f} "
                     f"| {shares} | {per_request} | {1e3 * results.machine['torch_threads'] / alone:.0f} "
                     f"| {one_thread} |")
    detection = results.detection
    if detection:
        searches = detection["searches"]
        lines += ["", "| photo | " + " | ".join(f"detect ms (share), {name}" for name in searches)
                  + " | photo ms, " + " / ".join(searches) + " |", "|---|" + "---|" * (len(searches) + 1)]
        for size in IMAGE_SIZES:
            row = detection[size]
            lines.append(f"| {size} | " + " | ".join(f"{row[n]['detect_ms']:.1f} ({100 * row[n]['share']:.0f}%)"
                                                     for n in searches)
                         + " | " + " / ".join(f"{row[n]['ms_per_photo']:.1f}" for n in searches) + " |")
        parity = [detection[key] | {"networks": key.removeprefix("parity_")} for key in detection
                  if key.startswith("parity_")]
        lines += ["", "Same boxes: " + "; ".join(
            f"{p['networks']} networks against facenet-pytorch's MTCNN.detect on {p['copies']} detection copies "
            f"({p['faces']} faces): largest box difference {p['largest_box_px']:.1e} px, probability "
            f"{p['largest_probability']:.1e}, mismatched {len(p['mismatched'])}" for p in parity) + "."]
    int8 = results.int8
    if int8:
        lines += ["", "| int8 forward, " + f"{results.settings['forward']} | network batch | fp32 img/s | int8 img/s "
                  "| int8 / fp32 (rounds) |", "|---|---|---|---|---|"]
        demo = int8.get("train_demo")
        for label, rows in (("default weights", int8["network"]),
                            *(((f"train-demo ({demo['backbone']}, {demo['input_size']} px)", demo["network"]),)
                              if demo else ())):
            lines += [f"| {label} | {r['batch']} | {r['fp32_img_s']:.1f} | {r['int8_img_s']:.1f} "
                      f"| {r['int8_over_fp32']:.2f} ({r['lowest']:.2f}-{r['highest']:.2f}) |" for r in rows]
        shift, inproc = int8["shift_on_real_crops"], int8["pipeline_1080p"]
        lines += ["", f"int8 on the default weights: largest fake-probability shift on {shift['crops']} real face "
                  f"crops {shift['largest']:.3f} (the fp32 export: {shift['fp32_onnx_largest']:.1e}); 1080p photos "
                  f"in-process {inproc['fp32_per_s']:.2f}/s fp32, {inproc['int8_per_s']:.2f}/s int8 "
                  f"(x{inproc['int8_over_fp32']:.2f}, rounds {inproc['lowest']:.2f}-{inproc['highest']:.2f})."]
        if demo:
            lines += ["", "| train-demo, held out | crops | ROC AUC | log loss | accuracy |", "|---|---|---|---|---|"]
            lines += [f"| {name} | {demo['crops']} | {demo[name]['roc_auc']:.3f} | {demo[name]['log_loss']:.4f} "
                      f"| {demo[name]['accuracy']:.3f} |" for name in ("fp32", "int8")]
            lines += ["", f"Largest fake-probability shift int8 - fp32 on those crops: {demo['largest_shift']:.3f}."]
    return lines


def configured_network_alone(results: Results, name: str = "1080p") -> float | None:
    """Images/s of the configured forward alone at its best batch size: around the served run of ``name`` when
    it was timed there (the mean of before and after), else in part (a); None without either."""
    around = results.served.get(name, {}).get("network_alone_img_s")
    if around:
        return statistics.mean(around)
    key = "onnxruntime_img_s" if results.settings["forward"] == "onnxruntime" else "pipeline_img_s"
    rates = [row[key] for row in results.network if key in row]
    return max(rates) if rates else None


def configured_forward_timer(pipeline: DetectionPipeline, onnx_forward: OnnxRuntimeForward | None,
                             results: Results, batch: int, repeats: int) -> Callable[[], float]:
    """A timer of the configured forward alone (images/s, median of ``repeats``) at part (a)'s best batch size
    for it (``batch`` without part (a)), on seeded random crops as in part (a)."""
    key = "onnxruntime_img_s" if pipeline.settings.forward == "onnxruntime" else "pipeline_img_s"
    rows = [row for row in results.network if key in row]
    best = max(rows, key=lambda row: row[key])["batch"] if rows else batch
    config = pipeline.config
    crops = np.random.default_rng(0).integers(0, 256, (best, config.input_size, config.input_size, 3), dtype=np.uint8)
    images = normalize(torch.from_numpy(crops), config.mean, config.std).contiguous()

    def forward() -> dict[str, float]:
        start = time.perf_counter()
        if onnx_forward is not None and pipeline.settings.forward == "onnxruntime":
            onnx_forward(images)
        else:
            pipeline.classify(crops)
        return {"forward": time.perf_counter() - start}

    return lambda: median_timing(forward, best, repeats).per_second


def compute_ratios(results: Results) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for name, row in results.pipeline.items():
        if name in results.served and row["pipeline"]["per_s"] > 0:
            served = results.served[name]["steady_requests_per_s"]
            ratios[f"served_over_inprocess_{name}"] = served / row["pipeline"]["per_s"]
        if "speedup" in row:
            ratios[f"inprocess_over_reference_{name}"] = row["speedup"]
    # Sizes are timed in the same rounds: the ratio of each round, then their median (and range, for the report).
    for size in ("1080p", "4k") if "480p" in results.pipeline else ():
        base = results.pipeline["480p"]["pipeline"]["rounds_ms"]
        median, low, high = paired_ratio(results.pipeline[size]["pipeline"]["rounds_ms"], base)
        ratios[f"cost_{size}_over_480p"] = median
        ratios[f"cost_{size}_over_480p_lowest"], ratios[f"cost_{size}_over_480p_highest"] = low, high
    if results.video_stride:
        ratios["video_stride10_over_stride1"] = results.video_stride["ratio"]
    for name in AGAINST_NETWORK_ALONE:
        network_alone = configured_network_alone(results, name)
        if network_alone and name in results.served:
            ratios[f"served_{name}_over_network_alone"] = results.served[name]["steady_requests_per_s"] / network_alone
    for size in IMAGE_SIZES if results.detection else ():
        for search in results.detection["searches"]:
            ratios[f"detect_share_{size}_{search}"] = results.detection[size][search]["share"]
        change = results.detection[size]["photo_cost_after_over_before"]
        ratios[f"photo_cost_{size}_openvino_over_facenet"] = change["ratio"]
        ratios[f"photo_cost_{size}_openvino_over_facenet_lowest"] = change["lowest"]
        ratios[f"photo_cost_{size}_openvino_over_facenet_highest"] = change["highest"]
    if results.int8:
        best = max(results.int8["network"], key=lambda row: row["int8_img_s"])
        ratios["int8_over_fp32_network"] = best["int8_over_fp32"]
        ratios["int8_over_fp32_network_lowest"] = best["lowest"]
        ratios["int8_over_fp32_network_highest"] = best["highest"]
        ratios["int8_over_fp32_1080p_inprocess"] = results.int8["pipeline_1080p"]["int8_over_fp32"]
    if results.jobs:
        ratios["job_over_inprocess_fps"] = results.jobs["ratio"]
        ratios["job_over_inprocess_fps_lowest"] = results.jobs["ratio_lowest"]
        ratios["job_over_inprocess_fps_highest"] = results.jobs["ratio_highest"]
    if results.long_video:
        ratios["verdict_10min_over_10s"] = results.long_video["ratio"]
        ratios["verdict_10min_over_10s_lowest"] = results.long_video["ratio_lowest"]
        ratios["verdict_10min_over_10s_highest"] = results.long_video["ratio_highest"]
    search = results.face_search
    for key in (f"face_photo_{size}" for size in (*IMAGE_SIZES, "group")):
        if key in search:
            ratios[f"{key}_after_over_before"] = search[key]["ratio"]
            ratios[f"{key}_after_over_before_lowest"] = search[key]["lowest"]
            ratios[f"{key}_after_over_before_highest"] = search[key]["highest"]
    for key in (f"second_look_{size}" for size in FACELESS_HEIGHTS):
        if key in search:
            ratios[f"faceless_{key.removeprefix('second_look_')}_second_look_over_first_only"] = search[key]["ratio"]
    if "recall_after" in search:
        ratios["face_recall"] = search["recall_after"]["recall"]
        ratios["face_recall_before"] = search["recall_before"]["recall"]
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter served runs")
    parser.add_argument("--sweep", action="store_true", help="also sweep batchSize / maxBatchDelay / workers")
    parser.add_argument("--skip-served", action="store_true", help="in-process parts only (no TorchServe)")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run this part alone (repeatable): (a) network, (b) pipeline, (c) served, (d) coverage, "
                        "(e) jobs, (f) limit; its figures go to latest-<parts>.json/.md, not latest.json")
    parser.add_argument("--served-time", default=None, help="Locust run time per served input (default 30s, quick 15s)")
    parser.add_argument("--users", type=int, default=None, help="Locust users (default 2 x batchSize x workers)")
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR)
    args = parser.parse_args(argv)
    started = time.monotonic()
    parts = [part for part in SECTIONS if part in (args.only or SECTIONS)]
    if args.skip_served:
        parts = [part for part in parts if part not in ("served", "jobs")]  # both need TorchServe
    repeats = 2 if args.quick else 7
    run_time = args.served_time or ("15s" if args.quick else "30s")

    serving = yaml.safe_load(DEFAULT_SERVING_CONFIG.read_text())
    settings = PipelineSettings.from_mapping(serving.get("handler"))
    workers = int(serving.get("minWorkers", 1))
    batch = int(serving.get("batchSize", 1))
    # In-process is one process with the whole machine; served is the archive's workers x threads.
    threads = settings.cpu_threads or available_cpus()
    served_threads = settings.cpu_threads or threads_per_worker(workers)
    use_cpu_threads(threads)
    keep_freed_memory(settings.keep_freed_mb)  # as the served workers do
    users = args.users or 2 * batch * workers

    args.report_dir.mkdir(parents=True, exist_ok=True)
    media = make_load_media()
    weights = args.report_dir / WEIGHTS_FILE
    save_weights(build_detector(seed=0), weights)
    reference_model = load_weights(weights).eval()
    reference = ReferencePipeline(reference_model, settings)
    onnx_forward = onnx_forward_for(reference_model, args.report_dir, threads)
    pipelines = {"torch": DetectionPipeline.from_weights(weights, settings.replace(forward="torch"), version="bench")}
    if onnx_forward is not None:
        pipelines["onnxruntime"] = DetectionPipeline.from_weights(
            weights, settings.replace(forward="onnxruntime"), version="bench", onnx_file=onnx_forward.path)
    pipeline = pipelines.get(settings.forward, pipelines["torch"])
    alternative = None if args.quick else next((p for p in pipelines.values() if p is not pipeline), None)
    results = Results(
        machine={"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
                 "torch_threads": threads, "platform": platform.platform(), "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        settings={"batchSize": batch, "maxBatchDelay": serving.get("maxBatchDelay"), "workers": workers,
                  "threads_per_worker": served_threads, "forward": pipeline.settings.forward,
                  "users": users, "served_time": run_time, "handler": serving.get("handler")},
    )
    if "network" in parts:
        print("(a) network alone", flush=True)
        results.network = bench_network(pipelines["torch"], reference_model, [1, 8] if args.quick else [1, 4, 8, 16],
                                        repeats, onnx_forward)
    if "pipeline" in parts:
        print(f"(b) pipeline in-process ({pipeline.settings.forward} forward, {threads} threads) vs reference",
              flush=True)
        results.pipeline = bench_pipeline(pipeline, reference, media, batch, repeats, alternative)
        results.quality = compare_quality(pipeline, reference, media)
        results.video_stride = bench_video_stride(pipeline, media, max(1, repeats // 2))
    if "coverage" in parts:
        print("(d) whole-input coverage: long videos, seeking, the face search", flush=True)
        results.long_video = bench_long_video(pipeline, DEFAULT_MEDIA_DIR, max(1, repeats // 2))
        results.seeking = bench_seeking_methods(DEFAULT_MEDIA_DIR, max(1, repeats // 3))
        results.face_search = bench_face_search(pipeline, media, batch, repeats)
        if settings.keep_freed_mb > 0:
            results.freed_memory = bench_freed_memory(media, settings.keep_freed_mb, repeats)
    store = args.report_dir / "store"
    archive = build_archive("bench", weights, MODEL_NAME, store) if {"served", "jobs"} & set(parts) else None
    if "served" in parts:
        assert archive is not None
        print(f"(c) served by TorchServe, Locust {users} users x {run_time} per input", flush=True)
        network_alone = configured_forward_timer(pipeline, onnx_forward, results, batch, repeats)
        results.served = bench_served(archive, args.report_dir / "run", media, users, run_time,
                                      network_alone=network_alone)
        results.worker_stages = bench_worker_stages(weights, settings, onnx_forward.path if onnx_forward else None,
                                                    media, batch, repeats, served_threads)
        if args.sweep:
            for number, config in enumerate(sweep_configs(args.quick)):
                serving_overrides = {k: v for k, v in config.items() if k != "forward"}
                swept = build_archive(f"sweep{number}", weights, MODEL_NAME, store, serving_overrides=serving_overrides,
                                      handler_overrides={"forward": config["forward"]})
                row = bench_served_one(swept, args.report_dir / f"run-sweep{number}", media,
                                       max(users, 2 * config["batchSize"] * config["minWorkers"]), run_time)
                results.sweep.append(config | row)
    if "limit" in parts:
        print("(f) near the limit: the face search's share, the int8 forward", flush=True)
        results.detection = bench_limit.bench_detection(pipeline, media, batch, repeats)
        if onnx_forward is not None:
            results.int8 = bench_limit.bench_int8(reference_model, onnx_forward, pipelines["onnxruntime"], media,
                                                  args.report_dir, [1, 8] if args.quick else [1, 4, 8, 16], batch,
                                                  repeats)
    if "jobs" in parts:
        assert archive is not None
        seconds = 60.0 if args.quick else 600.0
        print(f"(e) the job path: a {seconds:g} s 720p video as a job against in-process, {JOB_SAMPLING}", flush=True)
        results.jobs = bench_jobs(archive, args.report_dir / "run-jobs", pipeline, DEFAULT_MEDIA_DIR, seconds,
                                  max(1, repeats // 3))
    results.ratios = compute_ratios(results)

    command = ("deepfake-benchmark" + (" --quick" if args.quick else "") + (" --sweep" if args.sweep else "")
               + "".join(f" --only {part}" for part in args.only or ()))
    table = markdown(results, command)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Some parts alone do not replace the whole benchmark's latest figures.
    suffix = "" if args.only is None else "-" + "-".join(part for part in SECTIONS if part in args.only)
    payload = json.dumps(results.__dict__, indent=2, default=float)
    (args.report_dir / f"benchmark-{stamp}{suffix}.json").write_text(payload)
    (args.report_dir / f"latest{suffix}.json").write_text(payload)
    (args.report_dir / f"latest{suffix}.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nwritten: {args.report_dir / f'latest{suffix}.json'}, {args.report_dir / f'latest{suffix}.md'} "
          f"({time.monotonic() - started:.0f} s)")
    return 0


def bench_served_one(archive: Path, run_dir: Path, media: LoadMedia, users: int, run_time: str) -> dict[str, Any]:
    """Served 1080p photos under one archive's TorchServe settings (for the sweep)."""
    instance = start_private_server(run_dir, archive)
    try:
        warm_up(instance, MODEL_NAME, None, media.photos_of_size("1080p")[0].read_bytes(), count=2)
        summary = run_locust(instance.inference_url, instance.keys()["inference"], run_dir / "locust" / "1080p",
                             "ImageUser", users, run_time, extra_env={"DFD_IMAGE_SIZES": "1080p"})
    finally:
        instance.stop()
    print(f"  sweep {archive.stem}: {summary.line()}", flush=True)
    return summary.as_dict()


if __name__ == "__main__":
    sys.exit(main())
