"""The faster code gives the same answers: the CPU arrangement of MTCNN against facenet-pytorch's own
detect(), and the ONNX Runtime forward against PyTorch, on real photos and video frames.

Speed itself is not asserted here (the benchmark measures it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deepfake_detector import DetectionPipeline, PipelineSettings, WeightsMismatchError, build_detector
from deepfake_detector.faces import FaceDetector, detect_batched
from deepfake_detector.media import decode_media


def test_cpu_detection_gives_facenet_pytorchs_boxes(media):
    """The rearranged CPU detector returns the very boxes of MTCNN.detect (photos and every video frame)."""
    detector = FaceDetector(PipelineSettings())
    settings = PipelineSettings(sampling="every_nth:3", max_frames=40)
    photos = [decode_media(path.read_bytes(), settings).frames[0] for path in (media.astronaut, media.grace_hopper,
                                                                              media.cat)]
    batches = [frame[None] for frame in photos] + [np.stack(decode_media(media.face_video.read_bytes(),
                                                                         settings).frames)]
    compared = 0
    with torch.inference_mode():
        for batch in batches:
            expected_boxes, expected_probabilities = detector.mtcnn.detect(batch)
            boxes, probabilities = detect_batched(detector.mtcnn, batch)
            for want, want_p, got, got_p in zip(expected_boxes, expected_probabilities, boxes, probabilities,
                                                strict=True):
                if want is None:
                    assert got is None
                    continue
                assert got is not None and got.shape == np.asarray(want).shape
                np.testing.assert_allclose(got, np.asarray(want, dtype=np.float32), atol=0.05)
                np.testing.assert_allclose(got_p, np.asarray(want_p, dtype=np.float32), atol=1e-4)
                compared += 1
    assert compared >= 30


def test_onnxruntime_forward_gives_the_networks_probabilities(default_pipeline, media, tmp_path):
    """The optional ONNX Runtime forward (exported from the same weights) scores real crops within 1e-4."""
    pytest.importorskip("onnxruntime")
    onnx = PipelineSettings(forward="onnxruntime")
    exported = DetectionPipeline(build_detector(seed=0), onnx, onnx_file=tmp_path / "network.onnx")
    assert (tmp_path / "network.onnx").exists() and exported.runtime.name == "onnxruntime"
    assert exported.runtime.difference <= 1e-4
    for body in (media.astronaut.read_bytes(), media.grace_hopper.read_bytes(), media.face_video.read_bytes()):
        expected, actual = default_pipeline.score(body), exported.score(body)
        assert actual.fake_probability == pytest.approx(expected.fake_probability, abs=1e-4)
        assert [f.box for f in actual.faces] == [f.box for f in expected.faces]
    # A file that is not this network's export is refused at load, not served.
    other = build_detector(seed=1)
    with pytest.raises(WeightsMismatchError):
        DetectionPipeline(other, onnx, onnx_file=tmp_path / "network.onnx")
