"""The pipeline in-process: batches of mixed requests, isolation of errors, calibration, aggregation and
thresholds, each checked against the network applied by hand to the documented crop."""

from __future__ import annotations

import dataclasses
import itertools

import cv2
import numpy as np
import pytest
import torch
from deepfake_detector import DetectionPipeline, InputError, PipelineSettings
from deepfake_detector.sampling import Sampling
from deepfake_detector.transforms import center_region, crop_and_resize, crops_to_tensor, face_region
from deepfake_detector.verdict import Coverage
from deepfake_detector.weights import load_weights, save_weights
from deepfake_ops.load_media import write_group_photo

from tests.support.media import image_bytes, load_rgb


@pytest.fixture(scope="module")
def pipeline(weights_file) -> DetectionPipeline:
    return DetectionPipeline.from_weights(weights_file, PipelineSettings(), version="test")


@pytest.fixture(scope="module")
def bodies(media) -> dict[str, bytes]:
    return {
        "astronaut": media.astronaut.read_bytes(),
        "grace_hopper": media.grace_hopper.read_bytes(),
        "cat": media.cat.read_bytes(),
        "video": media.face_video.read_bytes(),
    }


def test_mixed_batch_gives_one_outcome_per_request_in_order(pipeline, bodies, media):
    batch = [bodies["astronaut"], b"not an image", bodies["video"], b"", bodies["cat"],
             image_bytes(load_rgb(media.grace_hopper), "JPEG")[:2000]]
    report = pipeline.score_batch(batch)
    kinds = [o.status if isinstance(o, InputError) else o.media.type for o in report.outcomes]
    assert kinds == ["image", 415, "video", 400, "image", 422]
    assert report.crops == 1 + 32 + 1  # a face, 32 video frames (uniform:32) with a face each, a centre crop
    assert set(report.stage_seconds) == {"decode", "detect", "crop", "forward"}


def test_a_request_scores_the_same_alone_or_in_a_batch(pipeline, bodies):
    together = pipeline.score_batch([bodies["astronaut"], b"junk", bodies["video"], bodies["grace_hopper"]])
    alone = [pipeline.score(bodies[name]) for name in ("astronaut", "video", "grace_hopper")]
    scored = [o for o in together.outcomes if not isinstance(o, InputError)]
    for joint, single in zip(scored, alone):
        assert joint.fake_probability == pytest.approx(single.fake_probability, abs=1e-4)
        assert joint.label == single.label


def test_requests_decoded_side_by_side_keep_their_places(weights_file, bodies, media):
    """With several threads the requests of a batch decode in parallel; outcomes stay where they were."""
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = DetectionPipeline.from_weights(weights_file)
        torch.set_num_threads(2)
        parallel = DetectionPipeline.from_weights(weights_file)
    finally:
        torch.set_num_threads(saved)
    assert (serial.decode_threads, parallel.decode_threads) == (1, 2)
    batch = [bodies["video"], b"", bodies["astronaut"], b"junk", bodies["cat"], bodies["grace_hopper"],
             image_bytes(load_rgb(media.grace_hopper), "JPEG")[:2000]]
    for one, other in zip(serial.score_batch(batch).outcomes, parallel.score_batch(batch).outcomes):
        if isinstance(one, InputError):
            assert isinstance(other, InputError) and (one.code, one.status) == (other.code, other.status)
        else:
            assert other.fake_probability == pytest.approx(one.fake_probability, abs=1e-5)
            assert (other.media, len(other.faces), other.sampled_frame_indices) == (
                one.media, len(one.faces), one.sampled_frame_indices)


def test_chunking_crops_does_not_change_scores(weights_file, bodies):
    small_chunks = DetectionPipeline.from_weights(weights_file, PipelineSettings(max_crops_per_forward=3))
    one_chunk = DetectionPipeline.from_weights(weights_file, PipelineSettings(max_crops_per_forward=64))
    a = small_chunks.score(bodies["video"])
    b = one_chunk.score(bodies["video"])
    for frame_a, frame_b in zip(a.frames, b.frames, strict=True):
        assert frame_a.fake_probability == pytest.approx(frame_b.fake_probability, abs=1e-4)


def test_score_is_the_network_on_the_documented_crop(pipeline, media):
    """No skew: the pipeline's probability equals the network applied to transforms' crop of the face."""
    result = pipeline.score(media.astronaut.read_bytes())
    rgb = load_rgb(media.astronaut)
    face = pipeline.face_detector.detect([rgb])[0].faces[0]
    assert list(result.faces[0].box) == [round(v, 1) for v in face.box]
    region = face_region(face.box, rgb.shape[1], rgb.shape[0], pipeline.config.face_margin)
    assert result.fake_probability == pytest.approx(network_probability(pipeline, rgb, region), abs=1e-5)


def network_probability(pipeline: DetectionPipeline, rgb: np.ndarray, region, temperature: float | None = None
                        ) -> float:
    """The network alone on transforms' crop of ``region``: softmax(logits / T)[FAKE], T the weights' own."""
    crop = crop_and_resize(rgb, region, pipeline.config.input_size)
    with torch.inference_mode():
        logits = pipeline.model(crops_to_tensor([crop], pipeline.config.mean, pipeline.config.std)).float()
    temperature = pipeline.config.temperature if temperature is None else temperature
    return torch.softmax(logits / temperature, dim=1)[0, pipeline.config.fake_index].item()


@pytest.mark.parametrize("forward", ["torch", "onnxruntime"])
def test_the_served_probability_is_calibrated_by_the_weights_temperature(weights_file, media, tmp_path, forward):
    """softmax(logits / T): weights calibrated with T = 2.5 answer neither the raw softmax nor 0.5."""
    hot = load_weights(weights_file)
    hot.config = dataclasses.replace(hot.config, temperature=2.5)
    save_weights(hot, tmp_path / "hot.safetensors")
    onnx_file = tmp_path / "hot.onnx" if forward == "onnxruntime" else None
    pipeline = DetectionPipeline.from_weights(tmp_path / "hot.safetensors", PipelineSettings(forward=forward),
                                              onnx_file=onnx_file)
    assert pipeline.runtime.name == forward
    rgb = load_rgb(media.astronaut)
    face = pipeline.face_detector.detect([rgb])[0].faces[0]
    region = face_region(face.box, rgb.shape[1], rgb.shape[0], pipeline.config.face_margin)
    served = pipeline.score(media.astronaut.read_bytes()).fake_probability
    assert served == pytest.approx(network_probability(pipeline, rgb, region), abs=1e-5)
    uncalibrated = network_probability(pipeline, rgb, region, temperature=1.0)
    assert abs(served - uncalibrated) > 1e-3, (served, uncalibrated)


def test_image_result_schema(pipeline, bodies):
    result = pipeline.score(bodies["grace_hopper"]).to_json()
    assert list(result) == ["label", "confidence", "fake_probability", "threshold", "face_detected", "media",
                            "model", "face_search", "faces_left_out", "faces"]
    assert (result["face_search"], result["faces_left_out"]) == ("first", 0)
    assert result["label"] in ("REAL", "FAKE")
    assert result["media"] == {"type": "image", "format": "jpeg", "width": 512, "height": 600}
    assert result["model"] == {"name": "deepfake_detector", "version": "test", "backbone": "efficientnet_b4",
                               "trained": False, "compute": "cpu/fp32"}
    assert result["face_detected"] is True
    face = result["faces"][0]
    assert list(face) == ["box", "detection_probability", "fake_probability"]
    assert result["fake_probability"] == face["fake_probability"]
    expected_confidence = max(result["fake_probability"], 1 - result["fake_probability"])
    assert result["confidence"] == pytest.approx(expected_confidence)


def test_no_face_falls_back_to_the_centre_crop(pipeline, media):
    """The score is the network's on the largest centred square, not a placeholder."""
    result = pipeline.score(media.cat.read_bytes())
    assert result.face_detected is False and result.faces == ()
    assert result.to_json()["face_search"] == "none"  # the second look found nothing either
    rgb = load_rgb(media.cat)
    expected = network_probability(pipeline, rgb, center_region(rgb.shape[1], rgb.shape[0]))
    assert result.fake_probability == pytest.approx(expected, abs=1e-5)
    assert abs(result.fake_probability - 0.5) > 1e-3, "the seeded default's scores move with the pixels"


def test_video_reports_exactly_the_sampled_frames(pipeline, bodies):
    """By default 32 frames spread from the first to the last, each with its time, and one face track (the
    video's one person), whose score (the best level held over two consecutive samples) is the video's."""
    result = pipeline.score(bodies["video"])
    indices = result.sampled_frame_indices
    assert len(indices) == 32 and indices[0] == 0 and indices[-1] == 119
    assert [f["index"] for f in result.to_json()["frames"]] == indices
    assert [frame.time_s for frame in result.frames] == pytest.approx([i / 29.97 for i in indices], abs=1e-3)
    assert all(frame.face_detected for frame in result.frames)
    (track,) = result.tracks
    assert track.frames == tuple(indices) and all(face.track_id == 0 for face in result.faces)
    frame_scores = [frame.fake_probability for frame in result.frames]
    assert result.fake_probability == pytest.approx(max(map(min, itertools.pairwise(frame_scores))))
    assert result.media.total_frames == 120 and result.aggregation == "tracks"
    assert result.coverage == Coverage(3.971, 120, 0, 0)
    assert result.to_json()["coverage"] == {"start_s": 0.0, "end_s": 3.971, "duration_s": 3.971,
                                            "frames_total": 120, "frames_sampled": 32, "samples_moved": 0,
                                            "samples_left_out": 0}


def test_a_request_may_choose_its_sampling(pipeline, bodies):
    result = pipeline.score(bodies["video"], Sampling("every_nth", 10))
    assert result.sampled_frame_indices == list(range(0, 120, 10))
    assert result.to_json()["sampling"] == {"policy": "every_nth", "stride": 10}
    every_second = pipeline.score(bodies["video"], Sampling("every_seconds", 1.0))
    assert [frame.time_s for frame in every_second.frames] == pytest.approx([0.0, 1.001, 2.002, 3.003], abs=1e-3)


@pytest.mark.parametrize(("method", "expected"), [("max", np.max), ("median", np.median), ("mean", np.mean)])
def test_video_aggregation_is_configurable(weights_file, bodies, method, expected):
    result = DetectionPipeline.from_weights(weights_file, PipelineSettings(aggregation=method)).score(bodies["video"])
    frame_scores = [frame.fake_probability for frame in result.frames]
    assert len(set(frame_scores)) > 2, "frames must score differently for the methods to differ"
    assert result.fake_probability == pytest.approx(float(expected(frame_scores)), abs=1e-12)
    assert result.aggregation == method


def test_a_group_photo_has_every_face_scored(pipeline, tmp_path):
    """Eight real people: eight scored faces, none left out, the photo as fake as the most-fake of them."""
    write_group_photo(tmp_path / "group.jpg")
    result = pipeline.score((tmp_path / "group.jpg").read_bytes())
    assert len(result.faces) == 8 and result.to_json()["faces_left_out"] == 0
    assert result.fake_probability == max(face.fake_probability for face in result.faces)


def test_several_faces_score_as_the_most_fake(pipeline, media):
    both = np.concatenate([load_rgb(media.astronaut), cv2.resize(load_rgb(media.grace_hopper), (437, 512))], axis=1)
    result = pipeline.score(image_bytes(both, "PNG"))
    assert len(result.faces) == 2
    probabilities = [face.fake_probability for face in result.faces]
    assert probabilities[0] != probabilities[1]
    assert result.fake_probability == max(probabilities)


def test_threshold_decides_the_label(weights_file, bodies):
    probability = DetectionPipeline.from_weights(weights_file).score(bodies["astronaut"]).fake_probability
    above = DetectionPipeline.from_weights(weights_file, PipelineSettings(threshold=min(0.99, probability + 0.01)))
    below = DetectionPipeline.from_weights(weights_file, PipelineSettings(threshold=max(0.01, probability - 0.01)))
    assert above.score(bodies["astronaut"]).label == "REAL"
    assert below.score(bodies["astronaut"]).label == "FAKE"


def test_score_raises_the_input_error(pipeline):
    with pytest.raises(InputError) as raised:
        pipeline.score(b"")
    assert raised.value.status == 400


def test_settings_refuse_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown key"):
        PipelineSettings.from_mapping({"frame_strid": 5})
    with pytest.raises(ValueError, match="face_margin is the crop margin the weights were trained with"):
        PipelineSettings.from_mapping({"face_margin": 0.5})
    for wrong in ({"threshold": "0.6"}, {"max_decode_per_sample": 2.5}, {"max_frames": True},
                  {"min_face_fraction": "1e-3"}):
        with pytest.raises(ValueError, match="must be a"):
            PipelineSettings.from_mapping(wrong)
    with pytest.raises(ValueError, match="threshold"):
        PipelineSettings(threshold=1.5)
    with pytest.raises(ValueError, match="aggregation"):
        PipelineSettings(aggregation="mode")
    for sampling in ("every_frame", "uniform:0", "uniform:many", "every_nth:2.5", "every_seconds:-1"):
        with pytest.raises(ValueError, match="sampling"):
            PipelineSettings(sampling=sampling)


def test_a_4k_jpeg_finds_the_face_of_the_photo_it_was_made_from(pipeline, media):
    """A 4K photo is decoded whole and searched on a copy sized for its smallest face worth scoring: its box, in
    its own pixels, is the small photo's box scaled up."""
    rgb = load_rgb(media.grace_hopper)
    scale = 2160 / rgb.shape[0]
    large = cv2.resize(rgb, (round(rgb.shape[1] * scale), 2160), interpolation=cv2.INTER_CUBIC)
    small_result = pipeline.score(image_bytes(rgb, "JPEG", quality=95))
    large_result = pipeline.score(image_bytes(large, "JPEG", quality=95))
    assert (large_result.media.width, large_result.media.height) == (large.shape[1], 2160)
    assert len(small_result.faces) == len(large_result.faces) == 1
    # Within a tenth of the face's height: MTCNN sees two different copies (of a JPEG and of a 4K JPEG), and its
    # box edges move by that much between them (the forehead edge most).
    small_box = np.array(small_result.faces[0].box)
    assert np.abs(np.array(large_result.faces[0].box) / scale - small_box).max() < 0.1 * (small_box[3] - small_box[1])


def test_a_decoder_failure_nobody_foresaw_fails_its_request_alone(pipeline, bodies, monkeypatch):
    """A bug in a decoder (simulated: the real decoders raise only RequestErrors on the 1,200 malformed bodies)
    is that request's 500 ``decode_failed``; the photos batched with it are scored."""
    import deepfake_detector.pipeline as pipeline_module

    real_decode = pipeline_module.decode_media

    def decode_with_a_bug(body, *args):
        if body == b"\x00trigger":
            raise IndexError("list index out of range")
        return real_decode(body, *args)

    monkeypatch.setattr(pipeline_module, "decode_media", decode_with_a_bug)
    outcomes = pipeline.score_batch([bodies["astronaut"], b"\x00trigger", bodies["grace_hopper"]]).outcomes
    assert [getattr(o, "status", 200) for o in outcomes] == [200, 500, 200]
    assert outcomes[1].code == "decode_failed" and "IndexError" in outcomes[1].detail
