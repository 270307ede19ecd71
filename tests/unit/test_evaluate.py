"""Evaluation: metrics against hand-computed figures, per-video aggregation by the server's own rule,
evaluation scores equal to the server's scores for the same crops, temperature fitting, ONNX parity.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from deepfake_detector import DetectionPipeline, ModelConfig, build_detector, save_weights
from deepfake_detector.verdict import video_probability
from deepfake_training import evaluation
from deepfake_training.data import Sample, load_crop, make_samples
from deepfake_training.index import CropRow, append_rows, read_index
from deepfake_training.metrics import (
    accuracy,
    binary_report,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    roc_auc,
    roc_curve,
)
from deepfake_training.onnx_export import export_onnx

TARGETS = [0, 0, 1, 1]


SCORES = [0.1, 0.4, 0.35, 0.8]


def test_metrics_match_a_hand_computed_case() -> None:
    # Verdicts at 0.5: REAL, REAL, REAL (wrong), FAKE. Of the 4 FAKE-REAL pairs, 3 are ordered right.
    assert accuracy(TARGETS, SCORES) == pytest.approx(0.75)
    assert roc_auc(TARGETS, SCORES) == pytest.approx(0.75)
    assert log_loss(TARGETS, SCORES) == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.35)
                                                        + math.log(0.8)) / 4)
    # Confidences 0.9, 0.6, 0.65, 0.8 fall in four different bins; right, right, wrong, right.
    assert expected_calibration_error(TARGETS, SCORES) == pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4)
    assert confusion_matrix(TARGETS, SCORES) == [[2, 0], [1, 1]]
    fpr, tpr = roc_curve(TARGETS, SCORES)
    assert list(fpr) == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert list(tpr) == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)  # a tie counts half
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    report = binary_report(TARGETS, SCORES, threshold=0.3)
    assert report["accuracy"] == pytest.approx(0.75) and report["confusion_matrix"] == [[1, 1], [0, 2]]


def test_fitted_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_margins = rng.normal(0, 2, 20000)
    targets = (rng.random(20000) < 1 / (1 + np.exp(-true_margins))).astype(int)
    assert fit_temperature(3.0 * true_margins, targets) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(0.5 * true_margins, targets) == pytest.approx(0.5, rel=0.1)


def _row(source: str, frame: int, face: int, label: str = "REAL") -> CropRow:
    return CropRow(source, source, frame, face, label, "test", f"{source}/{frame}_{face}.png", 0, 0, 10, 10)


def test_per_video_scores_follow_the_servers_rules() -> None:
    samples = [Sample(_row("a.mp4", 0, 0), False), Sample(_row("a.mp4", 0, 1), False),
               Sample(_row("a.mp4", 10, 0), False), Sample(_row("a.mp4", 0, 0), True),
               Sample(_row("a.mp4", 10, 0), True), Sample(_row("b.mp4", 0, 0, "FAKE"), False)]
    probabilities = np.array([0.2, 0.6, 0.1, 0.9, 0.7, 0.4])
    assert evaluation.video_probability is video_probability
    # tracks: a face's rank stands for its person; rank 1 (0.6) is seen in one frame only, so rank 0 decides,
    # at the level it holds over two consecutive frames (0.2 then 0.1: 0.1).
    for method, expected_a, expected_blended in (("mean", (0.6 + 0.1) / 2, 0.8), ("max", 0.6, 0.9),
                                                 ("median", (0.6 + 0.1) / 2, 0.8), ("tracks", 0.1, 0.7)):
        targets, scores, keys = evaluation.per_video(samples, probabilities, method)
        found = dict(zip(keys, zip(targets, scores, strict=True), strict=True))
        assert found["a.mp4#REAL"] == (0, pytest.approx(expected_a))  # a frame is its most-fake face
        assert found["a.mp4#blended"] == (1, pytest.approx(expected_blended))
        assert found["b.mp4#FAKE"] == (1, pytest.approx(0.4))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory, media) -> tuple[Path, Path]:
    """Two real face photos cropped by the server's pipeline, and a seeded untrained lite0 at 64 px."""
    from deepfake_training.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("eval_data")
    (root / "real").mkdir()
    for path in (media.astronaut, media.grace_hopper):
        (root / "real" / path.name).write_bytes(path.read_bytes())
    options = PrepareOptions(crop_size=64, split_overrides=(("astronaut", "test"), ("grace_hopper", "test")))
    index = prepare(root, root / "faces", options)
    weights = root / "lite0.safetensors"
    config = ModelConfig(backbone="tf_efficientnet_lite0", input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                         temperature=1.7)
    save_weights(build_detector(config, seed=1), weights)
    return index, weights


def test_evaluation_scores_crops_as_the_server_does(small_set: tuple[Path, Path], tmp_path: Path) -> None:
    index, weights = small_set
    results = evaluation.evaluate(weights, index, tmp_path, split="test", self_blend=True)
    assert results["per_frame"]["count"] == 4 and results["per_frame"]["real"] == 2
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert cv2.imread(str(tmp_path / "confusion_matrix.png")) is not None
    assert json.loads((tmp_path / "results.json").read_text())["per_video"]["count"] == 4
    # The evaluation's probability for each crop is what the served pipeline says for the same pixels,
    # temperature included.
    rows = read_index(index)
    samples = make_samples(rows, self_blend_reals=False)
    pipeline = DetectionPipeline.from_weights(weights)
    _, probabilities = evaluation.score_samples(pipeline.model, index.parent, samples, 8, pipeline.device)
    crops = np.stack([load_crop(index.parent, s.row, 64)[0] for s in samples])
    np.testing.assert_allclose(probabilities, pipeline.classify(crops), atol=1e-5)


def test_calibrate_writes_a_temperature_the_server_applies(small_set: tuple[Path, Path], tmp_path: Path) -> None:
    index, weights = small_set
    rows = read_index(index)
    val_index = tmp_path / "index.csv"
    append_rows(val_index, [dataclasses.replace(r, split="val", crop=str(index.parent / r.crop)) for r in rows])
    calibrated = tmp_path / "calibrated.safetensors"
    temperature = evaluation.calibrate(weights, val_index, calibrated)
    pipeline = DetectionPipeline.from_weights(calibrated)
    assert pipeline.config.temperature == pytest.approx(temperature)
    assert temperature != pytest.approx(1.7)


def test_onnx_export_matches_pytorch(small_set: tuple[Path, Path], tmp_path: Path) -> None:
    _, weights = small_set
    difference = export_onnx(weights, tmp_path / "model.onnx")
    assert difference < 1e-4
    assert (tmp_path / "model.onnx").stat().st_size > 1_000_000  # the weights are inside the one file
