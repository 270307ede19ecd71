"""The detector served end to end by a real TorchServe on loopback, with archives built in this session.
"""

from __future__ import annotations

import itertools
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from deepfake_detector import DetectionPipeline, PipelineSettings
from deepfake_detector.archive import ONNX_FILE, archive_path
from deepfake_ops.build_mar import build_archive

from tests.support import MODEL_NAME, ONE_WORKER, assert_on_face
from tests.support.media import image_bytes, load_rgb

pytestmark = pytest.mark.server


OCTET = {"Content-Type": "application/octet-stream"}


def predict(server, body: bytes, version: str | None = None, headers: dict | None = None) -> requests.Response:
    url = f"{server.inference_url}/predictions/{MODEL_NAME}" + (f"/{version}" if version else "")
    return requests.post(url, data=body, headers={**OCTET, **server.headers("inference"), **(headers or {})},
                         timeout=120)


def batch_sizes_logged(server) -> list[tuple[int, int]]:
    """(requests, errors) of every batch the handler has scored, from the worker's log."""
    text = (server.log_dir / "model_log.log").read_text()
    return [(int(n), int(e)) for n, e in re.findall(r"scored batch: requests=(\d+) errors=(\d+)", text)]


def worker_pids(server) -> list[int]:
    answer = requests.get(f"{server.management_url}/models/{MODEL_NAME}", headers=server.headers("management"),
                          timeout=10)
    return [w["pid"] for w in answer.json()[0]["workers"] if w["status"] == "READY"]


def test_a_real_face_photo_gets_a_verdict_with_the_face_box(server, media):
    answer = predict(server, media.astronaut.read_bytes())
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["label"] in ("REAL", "FAKE") and result["face_detected"] is True
    assert len(result["faces"]) == 1
    assert_on_face(result["faces"][0]["box"], "astronaut")
    assert result["model"]["version"] == "1.0" and result["model"]["trained"] is False


def test_multipart_upload_is_accepted(server, media):
    answer = requests.post(f"{server.inference_url}/predictions/{MODEL_NAME}",
                           files={"data": ("photo.jpg", media.grace_hopper.read_bytes())},
                           headers=server.headers("inference"), timeout=120)
    assert answer.status_code == 200, answer.text
    assert_on_face(answer.json()["faces"][0]["box"], "grace_hopper")


def test_a_photo_without_a_face_gets_a_centre_crop_verdict(server, media):
    result = predict(server, media.cat.read_bytes()).json()
    assert result["face_detected"] is False and result["faces"] == []
    assert result["label"] in ("REAL", "FAKE")


def test_the_real_face_video_gets_exactly_the_sampled_frames(server, media):
    result = predict(server, media.face_video.read_bytes()).json()
    indices = result["sampled_frame_indices"]
    assert len(indices) == 32 and (indices[0], indices[-1]) == (0, 119)  # uniform:32, first to last frame
    assert [f["index"] for f in result["frames"]] == indices
    assert all(len(f["faces"]) == 1 and f["faces"][0]["track_id"] == 0 for f in result["frames"])
    assert result["coverage"]["frames_sampled"] == 32 and result["coverage"]["end_s"] == pytest.approx(3.971)


def test_a_long_video_gets_a_timeline_of_its_whole_length(server, long_video):
    """A 90 s 720p H.264 video (long GOPs, B-frames) over HTTP: 32 samples from 0 s to its end, each with its
    time, one track for its one person, and the coverage of the whole length."""
    answer = predict(server, long_video.read_bytes())
    assert answer.status_code == 200, answer.text
    result = answer.json()
    times = [frame["time_s"] for frame in result["frames"]]
    assert len(times) == 32 and times[0] == 0.0 and times[-1] == pytest.approx(90.0, abs=0.1)
    assert times == sorted(times) and max(b - a for a, b in itertools.pairwise(times)) < 2 * 90 / 31
    assert result["coverage"]["duration_s"] == pytest.approx(90.0, abs=0.1)
    assert result["coverage"]["frames_total"] == 90 * 25
    assert [track["id"] for track in result["tracks"]] == [0]
    assert result["tracks"][0]["frames"] == result["sampled_frame_indices"]


def test_a_request_chooses_its_sampling_and_a_bad_choice_fails_alone(server, media):
    """The header and the multipart field override the archive's sampling for that request; a value that
    cannot be used is that request's 400, while the requests batched with it are scored."""
    video = media.face_video.read_bytes()
    by_header = predict(server, video, headers={"X-Deepfake-Sampling": "every_nth:10"}).json()
    assert by_header["sampled_frame_indices"] == list(range(0, 120, 10))
    assert by_header["sampling"] == {"policy": "every_nth", "stride": 10}
    by_field = requests.post(f"{server.inference_url}/predictions/{MODEL_NAME}",
                             files={"data": ("clip.mp4", video), "sampling": (None, "every_seconds:1")},
                             headers=server.headers("inference"), timeout=120)
    assert by_field.status_code == 200, by_field.text
    assert [f["time_s"] for f in by_field.json()["frames"]] == pytest.approx([0.0, 1.001, 2.002, 3.003], abs=1e-3)
    choices = ["uniform:8", "every_nth:0", None, "every_frame", "every_seconds:2"]
    with ThreadPoolExecutor(max_workers=len(choices)) as pool:
        answers = list(pool.map(lambda c: predict(server, video, headers={"X-Deepfake-Sampling": c} if c else {}),
                                choices))
    assert [a.status_code for a in answers] == [200, 400, 200, 400, 200]
    assert [len(a.json()["frames"]) for a in answers if a.status_code == 200] == [8, 32, 2]
    for bad in (answers[1], answers[3]):
        assert bad.json()["error"] == "bad_sampling" and bad.json()["retryable"] is False


def test_served_probabilities_equal_the_in_process_pipeline(server, media, weights_file, settings_v2):
    """No skew between the server's preprocessing and the library's: same network, same input, 1e-4."""
    for version, settings in (("1.0", PipelineSettings()), ("2.0", settings_v2)):
        local = DetectionPipeline.from_weights(weights_file, settings)
        for path in (media.astronaut, media.grace_hopper, media.cat, media.face_video):
            body = path.read_bytes()
            served = predict(server, body, version).json()
            expected = local.score(body).to_json()
            assert served["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-4), path.name
            if "frames" in expected:
                assert len(served["frames"]) == len(expected["frames"])
                for got, want in zip(served["frames"], expected["frames"]):
                    assert got["fake_probability"] == pytest.approx(want["fake_probability"], abs=1e-4)


def test_two_versions_with_different_settings_serve_side_by_side(server, media):
    video = media.face_video.read_bytes()
    v1, v2 = predict(server, video, "1.0").json(), predict(server, video, "2.0").json()
    assert (v1["model"]["version"], v2["model"]["version"]) == ("1.0", "2.0")
    assert len(v1["sampled_frame_indices"]) == 32
    assert v2["sampled_frame_indices"] == list(range(0, 120, 20))
    assert (v1["threshold"], v2["threshold"]) == (0.5, 0.6)
    versions = {d["modelVersion"] for d in server.describe(MODEL_NAME)}
    assert versions == {"1.0", "2.0"}


def test_concurrent_requests_are_batched(server, media):
    before = len(batch_sizes_logged(server))
    body = media.astronaut.read_bytes()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: predict(server, body).status_code, range(16)))
    assert statuses == [200] * 16
    time.sleep(0.5)
    sizes = [n for n, _ in batch_sizes_logged(server)[before:]]
    print(f"batch sizes the handler received for 16 concurrent requests: {sizes}")
    assert sum(sizes) == 16
    assert max(sizes) > 1


def test_a_corrupt_body_inside_a_batch_fails_alone(server, media):
    pids = worker_pids(server)
    good = media.grace_hopper.read_bytes()
    corrupt = image_bytes(load_rgb(media.astronaut), "JPEG")[:1500]
    bodies = [good, corrupt, good, b"\x13\x37 random bytes", good, good, corrupt, good]
    before = len(batch_sizes_logged(server))
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        answers = list(pool.map(lambda b: predict(server, b), bodies))
    time.sleep(0.5)
    expected = [200, 422, 200, 415, 200, 200, 422, 200]
    assert [a.status_code for a in answers] == expected
    for answer, status in zip(answers, expected):
        assert ("error" in answer.json()) == (status != 200)
    batches = batch_sizes_logged(server)[before:]
    print(f"(requests, errors) per batch: {batches}")
    assert any(n > e > 0 for n, e in batches), "no batch mixed valid and corrupt requests"
    assert worker_pids(server) == pids, "the worker must survive bad input"


def test_json_and_empty_bodies_get_clear_errors(server):
    answer = requests.post(f"{server.inference_url}/predictions/{MODEL_NAME}", json={"url": "face.jpg"},
                           headers=server.headers("inference"), timeout=60)
    assert answer.status_code == 415 and "octet-stream" in answer.json()["detail"]
    empty = predict(server, b"")
    assert empty.status_code == 400 and empty.json()["error"] == "empty_body"


def test_a_request_without_the_token_is_refused(server, media):
    answer = requests.post(f"{server.inference_url}/predictions/{MODEL_NAME}", data=media.cat.read_bytes(),
                           headers=OCTET, timeout=60)
    assert answer.status_code in (400, 401)
    assert "label" not in answer.text


def test_both_forward_runtimes_serve_the_same_probabilities(server, start_server, weights_file, media,
                                                            tmp_path_factory):
    """The default archive runs ONNX Runtime on the export build_mar packs; forward=torch runs PyTorch. Both
    serve the in-process PyTorch pipeline's probabilities within 1e-4."""
    with zipfile.ZipFile(archive_path(server.model_store, MODEL_NAME, "1.0")) as packed:
        assert ONNX_FILE in packed.namelist()
    store = tmp_path_factory.mktemp("torch_store")
    archive = build_archive("3.0", weights_file, MODEL_NAME, store, serving_overrides=ONE_WORKER,
                            handler_overrides={"forward": "torch"})
    with zipfile.ZipFile(archive) as packed:
        assert ONNX_FILE not in packed.namelist()
    on_torch = start_server(store, [archive.name])
    assert re.search(r"version 1\.0 on cpu \(\d+ threads, forward: onnxruntime cpu/fp32, face search: openvino, "
                     r"freed memory kept: no, warm-up [\d.]+ s\)",
                     (server.log_dir / "model_log.log").read_text())
    assert re.search(r"version 3\.0 on cpu \(\d+ threads, forward: torch cpu/fp32, face search: openvino, freed "
                     r"memory kept",
                     (on_torch.log_dir / "model_log.log").read_text())
    local = DetectionPipeline.from_weights(weights_file, PipelineSettings())
    for path in (media.astronaut, media.face_video):
        body = path.read_bytes()
        expected = local.score(body).fake_probability
        for instance in (server, on_torch):
            answer = predict(instance, body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["fake_probability"] == pytest.approx(expected, abs=1e-4)
