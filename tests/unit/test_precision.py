"""Reduced precision keeps the head in fp32, shown on a CPU with bfloat16 autocast.

A GPU worker runs the backbone under fp16 autocast. The head (Linear, ReLU, BatchNorm1d, Linear) must not
follow it: in half precision its normalisation and last projection alone move the fake probability by more
than the golden requests' 1e-4. No GPU here: CPU autocast (bfloat16, fewer mantissa bits than fp16) stands
in for it, through the same ``TorchRuntime`` code path the GPU takes.
"""

from __future__ import annotations

import numpy as np
import torch
from deepfake_detector.config import PipelineSettings
from deepfake_detector.pipeline import DetectionPipeline
from deepfake_detector.runtimes import TorchRuntime
from deepfake_detector.transforms import crop_and_resize, face_region, normalize
from deepfake_detector.weights import load_weights
from deepfake_ops.golden import COMPUTE_TOLERANCES, GOLDEN_INPUTS, PROBABILITY_TOLERANCE, compare_verdicts
from PIL import Image

CPU = torch.device("cpu")


def _features(model, pipeline: DetectionPipeline, paths) -> torch.Tensor:
    """fp32 backbone features of the face crops the pipeline takes from real photos."""
    crops = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        (face, *_) = pipeline.face_detector.detect([image])[0].faces
        region = face_region(face.box, image.shape[1], image.shape[0], model.config.face_margin)
        crops.append(crop_and_resize(image, region, model.config.input_size, model.config.crop_filter))
    batch = torch.from_numpy(np.stack(crops))
    with torch.inference_mode():
        return model.forward_features(normalize(batch, model.config.mean, model.config.std))


def test_the_head_stays_fp32_inside_autocast(trained, media) -> None:
    _, result = trained
    model = load_weights(result.weights).eval()
    pipeline = DetectionPipeline(model, PipelineSettings(forward="torch"))
    features = _features(model, pipeline, [media.astronaut, media.grace_hopper])
    runtime = TorchRuntime(model, CPU, "bf16")
    with torch.inference_mode():
        reference = model.fake_probability(model.forward_head(features))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            naive = model.fake_probability(model.forward_head(features))
            kept = model.fake_probability(runtime.head(features))
    naive_error = float((naive - reference).abs().max())
    kept_error = float((kept - reference).abs().max())
    print(f"\nhead under bf16 autocast: {naive_error:.2e} off fp32; the runtime's head: {kept_error:.2e}")
    assert kept_error <= 1e-6
    assert naive_error > PROBABILITY_TOLERANCE, "the premise: a half-precision head misses the golden tolerance"


def test_a_bf16_backbone_answers_within_its_recorded_golden_tolerance(trained) -> None:
    _, result = trained
    model = load_weights(result.weights).eval()
    fp32 = DetectionPipeline(model, PipelineSettings(forward="torch"))
    bf16 = DetectionPipeline(model, PipelineSettings(forward="torch", precision="bf16"))
    tolerances = COMPUTE_TOLERANCES["cpu/bf16"]
    for item in GOLDEN_INPUTS:
        if item.head_bytes is not None:
            continue  # the truncated input is an error, the same in every precision
        body = item.body()
        want, got = fp32.score(body), bf16.score(body)
        assert (want.model.compute, got.model.compute) == ("cpu/fp32", "cpu/bf16")
        print(f"{item.name}: fp32 {want.fake_probability:.5f}, bf16 {got.fake_probability:.5f}")
        assert compare_verdicts(want, got, tolerances) == [], item.name
