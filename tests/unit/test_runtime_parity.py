"""The faster code gives the same answers: the product's MTCNN against facenet-pytorch's own detect(), and
the ONNX Runtime forward against PyTorch, on real photos and video frames.

Speed itself is not asserted here (the benchmark measures it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deepfake_detector import DetectionPipeline, PipelineSettings, WeightsMismatchError, build_detector
from deepfake_detector.faces import FaceDetector
from deepfake_detector.media import decode_media
from deepfake_ops.detection_parity import compare_with_facenet
from deepfake_ops.load_media import resize_photo
from deepfake_ops.packaged import CHELSEA

NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the device code path of Mtcnn "
                            "(summed-area tables and PyTorch's networks on the GPU) cannot run here")


@pytest.mark.parametrize(("device", "detect_runtime"),
                         [("cpu", "openvino"), ("cpu", "torch"), pytest.param("cuda", "torch", marks=NO_GPU)])
def test_face_search_finds_facenet_pytorchs_faces(media, load_media, device, detect_runtime):
    """Both arrangements of MTCNN return MTCNN.detect's boxes (within 0.5 px) and probabilities (1e-4) on every
    copy the product searches of the tests' and the benchmark's photos and frames: the face photos at 480p,
    1080p and 4K, the group photo, every carphone frame, every 10th frame of the 720p clip, and faceless photos
    with their second look, in the product's batches."""
    detector = FaceDetector(PipelineSettings(detect_runtime=detect_runtime), device)
    assert detector.stages.networks.name == detect_runtime
    settings = PipelineSettings(sampling="every_nth:1", max_frames=200)
    images = {path.name: decode_media(path.read_bytes(), settings).frames[0]
              for path in (media.astronaut, media.grace_hopper, media.cat, *load_media.all_photos())}
    images["cat_1080p"] = np.asarray(resize_photo(CHELSEA.locate(), 1080))  # faceless: the second look searches
    for name, stride in (("carphone", 1), ("clip_720p", 10)):
        decoded = decode_media(load_media.videos[name].read_bytes(), settings.replace(sampling=f"every_nth:{stride}"))
        images.update({f"{name}#{index}": frame for index, frame in zip(decoded.frame_indices, decoded.frames)})
    report = compare_with_facenet(detector, images)
    assert report.same, report.mismatched
    assert report.largest_box_px <= 0.5 and report.largest_probability <= 1e-4
    assert report.copies >= len(images) + 1 and report.faces >= 150  # a second look was compared too


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
