"""The opt-in int8 forward (``precision: int8``): what users rely on when they build and serve one.

An int8 archive carries the fp32 export beside its int8 quantization, and its own handler answers from
the int8 file, saying so (``model.compute`` is ``cpu/int8``). Only the network's forward changes: the faces
an answer reports are the fp32 pipeline's. A combination that cannot run, a missing int8 export and an
export of other weights are refused at load with errors that say what to do; and the quality report of
``deepfake_ops.quantize`` compares fp32 and int8 on the same crops.

Real parts throughout: the ``trained`` EfficientNet-Lite0 weights, a real archive built by ``build_archive``
(golden answers recorded by its handler in a fresh process), real ONNX Runtime sessions, real photos and video.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from deepfake_detector import DetectionPipeline, PipelineSettings, WeightsMismatchError
from deepfake_detector.archive import (
    GOLDEN_FILE,
    INT8_ONNX_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    Archive,
    onnx_file_name,
)
from deepfake_detector.runtimes import export_onnx
from deepfake_detector.verdict import Verdict
from deepfake_detector.weights import load_weights
from deepfake_ops.build_mar import build_archive
from deepfake_ops.golden import GOLDEN_INPUTS, Tolerances, compare_verdicts, run_archive_handler
from deepfake_ops.quantize import (
    calibration_images,
    held_out_quality,
    int8_forward,
    probability_shift,
    quantize_network,
)
from deepfake_training.data import CropDataset, collate, make_samples
from deepfake_training.index import read_index

from tests.support import MODEL_NAME, ONE_WORKER

pytest.importorskip("onnxruntime")

INT8 = PipelineSettings(forward="onnxruntime", precision="int8")
LARGEST_SHIFT = 0.3
"""int8 moves fake probabilities (0.12 at most on the train-demo's held-out faces), never across the scale."""


@pytest.fixture(scope="module")
def weights(trained) -> Path:
    _, result = trained
    return result.weights


@pytest.fixture(scope="module")
def model(weights):
    return load_weights(weights).eval()


@pytest.fixture(scope="module")
def int8_archive(weights, tmp_path_factory) -> Path:
    """The trained weights as `make mar --set precision=int8` builds them, golden requests included."""
    return build_archive("1.0", weights, MODEL_NAME, tmp_path_factory.mktemp("int8_store"),
                         serving_overrides=ONE_WORKER, handler_overrides={"precision": "int8"}, golden_requests=True)


@pytest.fixture(scope="module")
def unpacked(int8_archive, tmp_path_factory) -> Path:
    return Archive(int8_archive).extract(tmp_path_factory.mktemp("int8_unpacked"))


@pytest.fixture(scope="module")
def int8_file(unpacked) -> Path:
    """The archive's own int8 export of the trained weights."""
    return unpacked / INT8_ONNX_FILE


def _boxes(verdict: Verdict) -> list[list[tuple[tuple[float, ...], float]]]:
    return [[(face.box, face.detection_probability) for face in frame.faces] for frame in verdict.frames]


def _assert_same_faces(want: Verdict, got: Verdict, where: str) -> None:
    tolerances = Tolerances()  # fp32's: the face search is the same code whatever the forward
    assert got.sampled_frame_indices == want.sampled_frame_indices, where
    assert got.face_detected == want.face_detected, where
    for want_frame, got_frame in zip(_boxes(want), _boxes(got), strict=True):
        assert len(got_frame) == len(want_frame), where
        for (want_box, want_p), (got_box, got_p) in zip(want_frame, got_frame, strict=True):
            assert got_box == pytest.approx(want_box, abs=tolerances.box_px), where
            assert got_p == pytest.approx(want_p, abs=tolerances.detection_probability), where


def test_an_int8_archive_answers_in_int8_with_the_fp32_faces(int8_archive, unpacked, int8_file):
    """The archive packs both exports; its handler's golden answers are valid, say cpu/int8, come from the int8
    file (an in-process int8 pipeline matches them within their recorded tolerance), and report the faces of
    the fp32 pipeline on the same inputs, with fake probabilities moved but within the int8 tolerance."""
    archive = Archive(int8_archive)
    members = archive.members()
    assert {WEIGHTS_FILE, ONNX_FILE, INT8_ONNX_FILE, GOLDEN_FILE} <= set(members), members
    settings = PipelineSettings.from_mapping(archive.manifest().handler_settings)
    assert (settings.forward, settings.precision) == ("onnxruntime", "int8")
    assert onnx_file_name(settings.precision) == INT8_ONNX_FILE

    golden = archive.golden()
    assert golden is not None
    entries = {entry["name"]: entry for entry in golden["requests"]}
    assert list(entries) == [item.name for item in GOLDEN_INPUTS]

    weights = unpacked / WEIGHTS_FILE
    fp32 = DetectionPipeline.from_weights(weights, settings.replace(precision="fp32"), version="1.0",
                                          onnx_file=unpacked / ONNX_FILE)
    int8 = DetectionPipeline.from_weights(weights, settings, version="1.0", onnx_file=int8_file)
    assert fp32.runtime.compute == "cpu/fp32" and fp32.runtime.difference <= 1e-4  # the weights' own export
    assert int8.runtime.compute == "cpu/int8"
    tolerances = Tolerances.recorded(golden, "cpu/int8")  # what `deepfake-rollout verify` holds int8 answers to

    shifts = {}
    for item in GOLDEN_INPUTS:
        entry = entries[item.name]
        if item.head_bytes is not None:  # the truncated photo: an error, whatever the precision
            assert entry["status"] == 422 and entry["response"]["error"] == "corrupt_media"
            continue
        assert entry["status"] == 200, entry
        recorded = Verdict.from_json(entry["response"])  # a valid answer, or VerdictError
        assert recorded.model.compute == "cpu/int8" and recorded.model.trained, item.name
        body = item.body()
        assert compare_verdicts(recorded, int8.score(body), tolerances) == [], item.name
        reference = fp32.score(body)
        _assert_same_faces(reference, recorded, item.name)
        shifts[item.name] = abs(recorded.fake_probability - reference.fake_probability)
    print(f"\nint8 on the random load-check batch: {int8.runtime.difference:.3f}; golden shifts against fp32: "
          + ", ".join(f"{name} {shift:.4f}" for name, shift in shifts.items()))
    assert entries["astronaut.png"]["response"]["face_detected"]  # the faces compared were real ones
    assert max(shifts.values()) > tolerances.probability, "the answers are fp32's: the int8 file was not used"
    assert max(shifts.values()) <= LARGEST_SHIFT


def test_int8_needs_onnxruntime(weights, tmp_path):
    """int8 with the PyTorch forward is refused as a setting, so `make mar` fails at once, saying which forward
    it needs, instead of building an archive no worker loads."""
    for changes in ({"precision": "int8"}, {"forward": "torch", "precision": "int8"}):
        with pytest.raises(ValueError, match="forward: onnxruntime"):
            PipelineSettings(**changes)
    with pytest.raises(ValueError, match="forward: onnxruntime"):
        build_archive("9.0", weights, MODEL_NAME, tmp_path, handler_overrides={"forward": "torch", "precision": "int8"})
    assert list(tmp_path.iterdir()) == []


def test_a_missing_int8_export_is_refused_not_exported(model, tmp_path):
    """A missing int8 file is a ValueError naming `make mar`; nothing is exported in its place."""
    missing = tmp_path / INT8_ONNX_FILE
    with pytest.raises(ValueError, match="make mar"):
        DetectionPipeline(model, INT8, onnx_file=missing)
    assert list(tmp_path.iterdir()) == []


def test_an_int8_archive_without_its_int8_export_does_not_load(unpacked, tmp_path):
    """The archive's own handler, in a fresh process, refuses to start without network.int8.onnx and says
    `make mar` packs it (it does not fall back to the fp32 export beside it)."""
    damaged = tmp_path / "unpacked"
    for path in unpacked.rglob("*"):
        target = damaged / path.relative_to(unpacked)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != INT8_ONNX_FILE:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    assert (damaged / ONNX_FILE).exists() and not (damaged / INT8_ONNX_FILE).exists()
    with pytest.raises(RuntimeError, match="make mar") as failure:
        run_archive_handler(damaged, [GOLDEN_INPUTS[0].body()])
    assert "precision: int8 needs the int8 export" in str(failure.value)


def test_an_int8_export_of_other_weights_is_refused(weights, model, int8_file, tmp_path):
    """An int8 export quantized from other weights of the same shape is refused at load (WeightsMismatchError:
    it names other weights' fingerprint), as is one that names none; the weights' own int8 export loads."""
    assert int8_forward(model, int8_file).compute == "cpu/int8"
    other = load_weights(weights).eval()  # the same config; one tensor moved: the fingerprint covers the tensors
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    foreign = quantize_network(other, export_onnx(other, tmp_path / ONNX_FILE), tmp_path / INT8_ONNX_FILE)
    with pytest.raises(WeightsMismatchError, match="quantized from other weights"):
        DetectionPipeline(model, INT8, onnx_file=foreign)
    unnamed = tmp_path / "unnamed.int8.onnx"
    exported = onnx.load(str(int8_file))
    del exported.metadata_props[:]
    onnx.save(exported, str(unnamed))
    with pytest.raises(WeightsMismatchError, match="missing"):
        DetectionPipeline(model, INT8, onnx_file=unnamed)


def test_the_untrained_default_quantizes_to_an_export_that_loads(weights_file, media, tmp_path):
    """`make mar --set precision=int8` without weights quantizes the seeded EfficientNet-B4 default: its int8
    export loads and scores a real photo in int8."""
    model = load_weights(weights_file).eval()
    int8_file = quantize_network(model, export_onnx(model, tmp_path / ONNX_FILE), tmp_path / INT8_ONNX_FILE,
                                 calibration_images(model))
    pipeline = DetectionPipeline(model, INT8, onnx_file=int8_file)
    verdict = pipeline.score(media.astronaut.read_bytes())
    assert verdict.model.compute == "cpu/int8" and verdict.model.backbone == "efficientnet_b4"
    assert verdict.face_detected and not verdict.model.trained


def test_held_out_quality_compares_fp32_and_int8_on_the_same_crops(weights, model, faces, int8_file):
    """Both reports count the split's crops (its reals and their self-blended fakes), and the largest shift
    is the largest |p_int8 - p_fp32| over those crops, as probability_shift measures it."""
    split = "train"  # the faces fixture has no test split; its train split holds the carphone frames
    rows = [row for row in read_index(faces) if row.split == split]
    assert rows
    int8 = int8_forward(model, int8_file)
    report = held_out_quality(weights, faces, int8, split)

    crops = 2 * len(rows)  # every crop is REAL here, and each gets one self-blended fake
    assert report["split"] == split and report["crops"] == crops
    for precision in ("fp32", "int8"):
        assert report[precision]["count"] == crops and report[precision]["fake"] == len(rows), precision
        assert 0.0 <= report[precision]["roc_auc"] <= 1.0 and report[precision]["log_loss"] > 0, precision

    config = model.config
    dataset = CropDataset(Path(faces).parent, make_samples(rows, True), config.input_size, train=False)
    images, targets = collate(config.mean, config.std)([dataset[i] for i in range(len(dataset))])
    assert int(targets.sum()) == len(rows)
    shift = probability_shift(model, int8, images.contiguous())
    print(f"\nheld-out ({split}, {crops} crops): largest shift {report['largest_shift']:.4f}, log loss fp32 "
          f"{report['fp32']['log_loss']:.4f} int8 {report['int8']['log_loss']:.4f}")
    assert report["largest_shift"] == pytest.approx(shift, abs=1e-6)
    assert 1e-4 < shift <= LARGEST_SHIFT  # int8 moved the answers
