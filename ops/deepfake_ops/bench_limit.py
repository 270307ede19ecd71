"""The benchmark's part (f): how near the network's own speed the pipeline runs.

* **The face search's share** (:func:`bench_detection`): the face photos at 480p, 1080p and 4K through the
  whole pipeline in-process (the configured forward), in the same rounds, with three face searches:
  facenet-pytorch's own ``MTCNN.detect`` (the definition), the product's MTCNN arrangement with PyTorch's
  networks, and with OpenVINO's (``detect_runtime``); each one's detect milliseconds and share of a photo's
  cost. With :mod:`.detection_parity` on every photo and frame the benchmark uses: the same boxes.
* **The int8 forward** (:func:`bench_int8`): the network alone in fp32 (ONNX Runtime, the configured forward)
  and int8 (``precision: int8``, :mod:`.quantize`) in the same rounds at each batch size; the 1080p photos
  in-process with each; the largest fake-probability shift on real face crops; and, when ``make train-demo``
  has left its trained weights and crop index, the held-out ROC AUC and log loss of both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepfake_detector.architecture import DeepfakeDetector
from deepfake_detector.archive import INT8_ONNX_FILE, ONNX_FILE
from deepfake_detector.pipeline import DetectionPipeline
from deepfake_detector.runtimes import OnnxRuntimeForward
from deepfake_detector.transforms import crop_and_resize, face_region, normalize
from deepfake_detector.weights import load_weights

from . import detection_parity, face_recall, quantize
from .load_media import PHOTO_HEIGHTS, LoadMedia
from .paths import REPORTS
from .timing import interleaved_timings, paired_ratio

IMAGE_SIZES = tuple(PHOTO_HEIGHTS)

TRAIN_DEMO = REPORTS / "train-demo"
"""Where ``make train-demo`` leaves ``run/best.safetensors`` and ``faces/index.csv``."""


class FacenetDetect:
    """facenet-pytorch's own ``MTCNN.detect`` in the place of the product's stages: the search it replaced."""

    def __init__(self, mtcnn: Any) -> None:
        self.mtcnn = mtcnn

    def detect(self, batch: np.ndarray) -> tuple[list[Any], list[Any]]:
        with torch.inference_mode():
            boxes, probabilities = self.mtcnn.detect(batch)
        return list(boxes), list(probabilities)


def searches(pipeline: DetectionPipeline) -> dict[str, DetectionPipeline]:
    """The pipeline with each face search (same network, same forward runtime)."""
    onnx_file = getattr(pipeline.runtime, "path", None)
    variants = {}
    for name, runtime in (("facenet-pytorch", "torch"), ("torch", "torch"), ("openvino", "openvino")):
        variants[name] = DetectionPipeline(pipeline.model, pipeline.settings.replace(detect_runtime=runtime),
                                           onnx_file=onnx_file)
    variants["facenet-pytorch"].face_detector.stages = FacenetDetect(variants["facenet-pytorch"].face_detector.mtcnn)
    return variants


def bench_detection(pipeline: DetectionPipeline, media: LoadMedia, batch: int, repeats: int) -> dict[str, Any]:
    """Detect ms and share of each photo size's cost under each face search, in the same rounds; the parity of
    the product's searches with facenet-pytorch's."""
    variants = searches(pipeline)
    runs = {}
    for size in IMAGE_SIZES:
        batch_bodies = media.request_batch(size, batch)
        for name, variant in variants.items():
            runs[f"{size} {name}"] = (lambda b=batch_bodies, v=variant: v.score_batch(b).stage_seconds, batch)
    timings = interleaved_timings(runs, repeats)
    result: dict[str, Any] = {"searches": list(variants)}
    for size in IMAGE_SIZES:
        row = {}
        for name in variants:
            timing = timings[f"{size} {name}"]
            row[name] = {"detect_ms": timing.stages_ms["detect"], "ms_per_photo": timing.ms_per_item,
                         "share": timing.stages_ms["detect"] / sum(timing.stages_ms.values()),
                         "stages_ms": timing.stages_ms, "rounds_ms": timing.rounds_ms}
        ratio, low, high = paired_ratio(timings[f"{size} openvino"].rounds_ms,
                                        timings[f"{size} facenet-pytorch"].rounds_ms)
        row["photo_cost_after_over_before"] = {"ratio": ratio, "lowest": low, "highest": high}
        result[size] = row
        shares = ", ".join(f"{name} {row[name]['detect_ms']:.1f} ms ({100 * row[name]['share']:.0f}% of "
                           f"{row[name]['ms_per_photo']:.1f})" for name in variants)
        print(f"  {size:>6}: detect {shares}; photo cost openvino / facenet-pytorch x{ratio:.2f}", flush=True)
    images = face_recall.recall_media()
    for name in ("openvino", "torch"):
        report = detection_parity.compare_with_facenet(variants[name].face_detector, images)
        result[f"parity_{name}"] = report.to_json()
        print(f"  parity with facenet-pytorch ({name} networks): {report.copies} copies, {report.faces} faces, "
              f"largest box difference {report.largest_box_px:.1e} px, probability {report.largest_probability:.1e}, "
              f"mismatched: {report.mismatched or 'none'}", flush=True)
    return result


def bench_int8(model: DeepfakeDetector, fp32: OnnxRuntimeForward, pipeline: DetectionPipeline, media: LoadMedia,
               folder: Path, batch_sizes: list[int], batch: int, repeats: int) -> dict[str, Any]:
    """fp32 against int8 on the benchmark's weights (speed, shift on real crops) and on the train-demo's."""
    started = time.perf_counter()
    int8_file = quantize.quantize_network(model, fp32.path, folder / INT8_ONNX_FILE)
    int8 = quantize.int8_forward(model, int8_file)
    print(f"  quantized in {time.perf_counter() - started:.0f} s; difference on the load check's random batch "
          f"{int8.difference:.3f}", flush=True)
    result: dict[str, Any] = {"network": network_rows(model, fp32, int8, batch_sizes, repeats)}
    crops = face_crops(pipeline, model)
    result["shift_on_real_crops"] = {"crops": len(crops), "largest": quantize.probability_shift(model, int8, crops),
                                     "fp32_onnx_largest": quantize.probability_shift(model, fp32, crops)}
    int8_pipeline = DetectionPipeline(model, pipeline.settings.replace(precision="int8"), onnx_file=int8_file)
    batch_bodies = media.request_batch("1080p", batch)
    timings = interleaved_timings({
        "fp32": (lambda: pipeline.score_batch(batch_bodies).stage_seconds, batch),
        "int8": (lambda: int8_pipeline.score_batch(batch_bodies).stage_seconds, batch)}, repeats)
    ratio, low, high = paired_ratio(timings["fp32"].rounds_ms, timings["int8"].rounds_ms)
    result["pipeline_1080p"] = {"fp32_per_s": timings["fp32"].per_second, "int8_per_s": timings["int8"].per_second,
                                "int8_over_fp32": ratio, "lowest": low, "highest": high}
    print(f"  largest shift on {len(crops)} real face crops: {result['shift_on_real_crops']['largest']:.3f}; 1080p "
          f"in-process fp32 {timings['fp32'].per_second:.2f}/s, int8 {timings['int8'].per_second:.2f}/s "
          f"(x{ratio:.2f})", flush=True)
    result["train_demo"] = train_demo_quality(folder, batch_sizes, repeats)
    return result


def network_rows(model: DeepfakeDetector, fp32: OnnxRuntimeForward, int8: OnnxRuntimeForward,
                 batch_sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Images/s of both exports at each batch size, in the same rounds, on seeded random crops."""
    size = model.config.input_size
    rows = []
    for batch in batch_sizes:
        crops = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        images = normalize(torch.from_numpy(crops), model.config.mean, model.config.std).contiguous()
        timings = interleaved_timings({name: (lambda f=forward, i=images: _timed(f, i), batch)
                                       for name, forward in (("fp32", fp32), ("int8", int8))}, repeats)
        ratio, low, high = paired_ratio(timings["fp32"].rounds_ms, timings["int8"].rounds_ms)
        rows.append({"batch": batch, "fp32_img_s": timings["fp32"].per_second,
                     "int8_img_s": timings["int8"].per_second, "int8_over_fp32": ratio, "lowest": low,
                     "highest": high})
        print(f"  network batch {batch:>2}: fp32 {timings['fp32'].per_second:.1f} img/s, int8 "
              f"{timings['int8'].per_second:.1f} img/s (x{ratio:.2f})", flush=True)
    return rows


def _timed(forward: OnnxRuntimeForward, images: torch.Tensor) -> dict[str, float]:
    start = time.perf_counter()
    forward(images)
    return {"forward": time.perf_counter() - start}


def face_crops(pipeline: DetectionPipeline, model: DeepfakeDetector) -> torch.Tensor:
    """Normalised crops of every face the pipeline finds in the photos and frames the benchmark uses."""
    config = model.config
    crops = []
    images = list(face_recall.recall_media().values())
    for image, found in zip(images, pipeline.face_detector.detect(images), strict=True):
        height, width = image.shape[:2]
        for face in found.faces:
            region = face_region(face.box, width, height, config.face_margin)
            crops.append(crop_and_resize(image, region, config.input_size, config.crop_filter))
    return normalize(torch.from_numpy(np.stack(crops)), config.mean, config.std).contiguous()


def train_demo_quality(folder: Path, batch_sizes: list[int], repeats: int) -> dict[str, Any] | None:
    """The train-demo's trained weights in fp32 and int8 on its held-out crops, and both exports' speed; None
    (with a note) when ``make train-demo`` has not run here."""
    weights, index = TRAIN_DEMO / "run" / "best.safetensors", TRAIN_DEMO / "faces" / "index.csv"
    if not (weights.exists() and index.exists()):
        print(f"  (no {weights} and {index}: run `make train-demo` for the held-out AUC and log loss)", flush=True)
        return None
    model = load_weights(weights).eval()
    demo = folder / "train-demo"
    demo.mkdir(exist_ok=True)
    (demo / ONNX_FILE).unlink(missing_ok=True)
    fp32 = OnnxRuntimeForward(model, demo / ONNX_FILE, torch.get_num_threads())
    int8 = quantize.int8_forward(model, quantize.quantize_network(model, fp32.path, demo / INT8_ONNX_FILE))
    quality = quantize.held_out_quality(weights, index, int8)
    quality["network"] = network_rows(model, fp32, int8, batch_sizes, repeats)
    quality["backbone"], quality["input_size"] = model.config.backbone, model.config.input_size
    print(f"  train-demo ({model.config.backbone} at {model.config.input_size} px), {quality['crops']} held-out crops: "
          f"fp32 AUC {quality['fp32']['roc_auc']:.3f} log loss {quality['fp32']['log_loss']:.3f}; int8 AUC "
          f"{quality['int8']['roc_auc']:.3f} log loss {quality['int8']['log_loss']:.3f}; largest shift "
          f"{quality['largest_shift']:.3f}", flush=True)
    return quality
