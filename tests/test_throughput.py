"""Throughput tooling: the load-test media, the response schema, the CPU face detector's parity with
facenet-pytorch, a short real Locust run against a real TorchServe, and a miniature benchmark.

Speed itself is not asserted here (the benchmark measures it); these tests check that the tools measure
the right thing and that the faster code gives the same answers.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from build_mar import archive_path
from deepfake_detector import DetectionPipeline, PipelineSettings, WeightsMismatchError, build_detector
from deepfake_detector.faces import FaceDetector, detect_on_cpu
from deepfake_detector.media import decode_media
from make_load_media import PHOTO_HEIGHTS, make_load_media

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "loadtests"))

from response_schema import schema_problems  # noqa: E402
from run_loadtest import plot_history, run_locust, summarize, warm_up  # noqa: E402

MODEL_NAME = "deepfake_detector"


@pytest.fixture(scope="module")
def load_media(tmp_path_factory: pytest.TempPathFactory):
    return make_load_media(tmp_path_factory.mktemp("load_media"))


@pytest.fixture(scope="module")
def pipeline() -> DetectionPipeline:
    return DetectionPipeline(build_detector(seed=0), PipelineSettings(), version="test")


def test_load_media_are_resized_real_photos_and_a_720p_clip_of_real_frames(load_media, media):
    for name, sizes in load_media.photos.items():
        for size, path in sizes.items():
            image = cv2.imread(str(path))
            assert image is not None, path
            assert image.shape[0] == PHOTO_HEIGHTS[size], (path, image.shape)
        # The 480p copy still looks like its source: same aspect, close pixels after resizing back.
        source = cv2.imread(str(media.astronaut if name == "astronaut" else media.grace_hopper))
        small = cv2.imread(str(sizes["480p"]))
        assert abs(small.shape[1] / small.shape[0] - source.shape[1] / source.shape[0]) < 0.01
        back = cv2.resize(small, (source.shape[1], source.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(back.astype(int) - source.astype(int)).mean() < 12

    clip = cv2.VideoCapture(str(load_media.videos["clip_720p"]))
    assert (clip.get(cv2.CAP_PROP_FRAME_WIDTH), clip.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (1280, 720)
    assert clip.get(cv2.CAP_PROP_FRAME_COUNT) == 300
    clip.release()
    decoded = decode_media(load_media.videos["clip_720p"].read_bytes(), PipelineSettings(max_frames=3))
    assert decoded.kind == "video" and decoded.format == "mp4" and decoded.frame_indices == [0, 10, 20]


def test_the_720p_clip_and_the_big_photos_still_show_the_face(load_media, pipeline):
    answer = pipeline.score(load_media.videos["clip_720p"].read_bytes())
    assert schema_problems(answer, "video") == []
    assert sum(frame["face_detected"] for frame in answer["frames"]) >= len(answer["frames"]) - 2
    for path in load_media.photos_of_size("4k"):
        answer = pipeline.score(path.read_bytes())
        assert schema_problems(answer, "image") == [] and len(answer["faces"]) == 1, path


def test_the_schema_accepts_real_answers_and_names_what_is_wrong(pipeline, media):
    image = pipeline.score(media.astronaut.read_bytes())
    video = pipeline.score(media.face_video.read_bytes())
    assert schema_problems(image, "image") == []
    assert schema_problems(video, "video") == []
    assert schema_problems(image, "video") == ["media.type is 'image', expected 'video'"]

    flipped = json.loads(json.dumps(image))
    flipped["label"] = "REAL" if image["label"] == "FAKE" else "FAKE"
    assert any("contradicts" in p for p in schema_problems(flipped))
    missing = {k: v for k, v in image.items() if k != "fake_probability"}
    assert any("fake_probability" in p for p in schema_problems(missing))
    broken_video = json.loads(json.dumps(video))
    broken_video["sampled_frame_indices"] = broken_video["sampled_frame_indices"][1:]
    assert any("sampled_frame_indices" in p for p in schema_problems(broken_video))
    assert schema_problems({"error": "corrupt_media", "detail": "x"})


def test_cpu_detection_gives_facenet_pytorchs_boxes(media):
    """The rearranged CPU detector returns the very boxes of MTCNN.detect (photos and every video frame)."""
    detector = FaceDetector(PipelineSettings())
    settings = PipelineSettings(frame_stride=3, max_frames=40)
    photos = [decode_media(path.read_bytes(), settings).frames[0] for path in (media.astronaut, media.grace_hopper,
                                                                              media.cat)]
    batches = [frame[None] for frame in photos] + [np.stack(decode_media(media.face_video.read_bytes(),
                                                                         settings).frames)]
    compared = 0
    with torch.inference_mode():
        for batch in batches:
            expected_boxes, expected_probabilities = detector.mtcnn.detect(batch)
            boxes, probabilities = detect_on_cpu(detector.mtcnn, batch)
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


@pytest.mark.server
def test_locust_run_checks_every_answer_and_writes_its_reports(start_server, model_store, media, tmp_path):
    instance = start_server(model_store, [archive_path(model_store, MODEL_NAME, "1.0").name,
                                          archive_path(model_store, MODEL_NAME, "2.0").name])
    token = instance.keys()["inference"]
    warm_up(instance, f"/predictions/{MODEL_NAME}/2.0", media.astronaut.read_bytes(), count=1)
    prefix = tmp_path / "images"
    summary = run_locust(instance.inference_url, token, prefix, "MixedUser", users=2, run_time="15s",
                         html=tmp_path / "images.html", warmup_s=0,
                         extra_env={"DFD_IMAGE_SIZES": "480p", "DFD_VIDEOS": "carphone",
                                    "DFD_MODEL_VERSION": "2.0", "DFD_MEDIA_DIR": str(tmp_path / "media")})
    assert summary.requests > 0 and summary.failures == 0, summary
    assert summary.steady_requests_per_s > 0 and summary.p50_ms > 0
    assert (tmp_path / "images.html").stat().st_size > 0
    png = plot_history(prefix, tmp_path / "images.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summarize(prefix, 0).requests == summary.requests

    # A wrong token and an unknown version are counted as failures, not as throughput.
    refused = run_locust(instance.inference_url, "not-the-token", tmp_path / "refused", "ImageUser", users=1,
                         run_time="3s", warmup_s=0,
                         extra_env={"DFD_IMAGE_SIZES": "480p", "DFD_MEDIA_DIR": str(tmp_path / "media")})
    assert refused.requests > 0 and refused.failures == refused.requests
    unknown = run_locust(instance.inference_url, token, tmp_path / "unknown", "ImageUser", users=1,
                         run_time="3s", warmup_s=0,
                         extra_env={"DFD_IMAGE_SIZES": "480p", "DFD_MODEL_VERSION": "9.9",
                                    "DFD_MEDIA_DIR": str(tmp_path / "media")})
    assert unknown.requests > 0 and unknown.failures == unknown.requests


def test_benchmark_reference_and_pipeline_agree_and_the_table_renders(pipeline, load_media):
    import benchmark

    reference = benchmark.ReferencePipeline(build_detector(seed=0), pipeline.settings)
    quality = benchmark.compare_quality(pipeline, reference, load_media)
    assert quality["mismatches"] == [], quality
    assert quality["max_prob_diff"] <= 1e-4, quality
    network = benchmark.bench_network(pipeline, reference.model, [2], repeats=1)
    assert network[0]["max_abs_prob_diff"] <= 1e-4 and network[0]["pipeline_img_s"] > 0

    results = benchmark.Results(
        machine={"when": "now", "cpus": 2, "torch_threads": torch.get_num_threads(), "gpu": None},
        settings={"batchSize": 2, "maxBatchDelay": 50, "workers": 2, "threads_per_worker": 1, "forward": "onnxruntime"},
        network=network, quality=quality,
    )
    # Rounds taken together: 4K costs 1.25, 1.20 and 1.30 times 480p, round by round.
    rounds = {"480p": [100.0, 110.0, 90.0], "1080p": [120.0, 120.0, 120.0], "4k": [125.0, 132.0, 117.0]}
    results.pipeline = {size: _fake_row(taken) for size, taken in rounds.items()}
    results.served = {"480p": {"steady_requests_per_s": 9.6, "p50_ms": 500, "p95_ms": 800}}
    results.ratios = benchmark.compute_ratios(results)
    assert results.ratios["served_over_inprocess_480p"] == pytest.approx(0.96)
    assert results.ratios["cost_4k_over_480p"] == pytest.approx(1.25)
    table = benchmark.markdown(results, "python scripts/benchmark.py")
    assert "| 480p |" in table and "served over inprocess 480p | 0.96 | >= 0.95" in table
    assert "| cost 4k over 480p | 1.25 (rounds 1.20-1.30) | <= 1.3 |" in table
    assert "served: 2 workers x 1 threads; forward onnxruntime" in table
    assert "in-process, torch forward /s" in table


def _fake_row(rounds_ms: list[float]) -> dict:
    ms_per_image = statistics.median(rounds_ms)
    timing = {"stages_ms": dict.fromkeys(("decode", "detect", "crop", "forward"), ms_per_image / 4),
              "ms_per_item": ms_per_image, "rounds_ms": rounds_ms, "per_s": 1000 / ms_per_image}
    return {"kind": "image", "pipeline": timing, "reference": timing, "speedup": 1.0}


def test_onnxruntime_forward_gives_the_networks_probabilities(pipeline, media, tmp_path):
    """The optional ONNX Runtime forward (exported from the same weights) scores real crops within 1e-4."""
    pytest.importorskip("onnxruntime")
    exported = DetectionPipeline(build_detector(seed=0), PipelineSettings(), onnx_file=tmp_path / "network.onnx")
    assert (tmp_path / "network.onnx").exists() and exported.onnx_forward is not None
    assert exported.onnx_forward.difference <= 1e-4
    for body in (media.astronaut.read_bytes(), media.grace_hopper.read_bytes(), media.face_video.read_bytes()):
        expected, actual = pipeline.score(body), exported.score(body)
        assert actual["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-4)
        assert [f["box"] for f in actual.get("faces", [])] == [f["box"] for f in expected.get("faces", [])]
    # A file that is not this network's export is refused at load, not served.
    other = build_detector(seed=1)
    with pytest.raises(WeightsMismatchError):
        DetectionPipeline(other, PipelineSettings(), onnx_file=tmp_path / "network.onnx")
