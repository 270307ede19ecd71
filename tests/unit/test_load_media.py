"""The load-test media: resized real photos and a 720p clip of real frames that still show the face, and the
verdict check every Locust answer goes through, on real answers."""

from __future__ import annotations

import json

import cv2
import numpy as np
from deepfake_detector import PipelineSettings
from deepfake_detector.config import ModelConfig
from deepfake_detector.media import decode_media
from deepfake_detector.verdict import verdict_problems
from deepfake_ops.load_media import FACE_CROP, PHOTO_HEIGHTS


def test_load_media_are_resized_real_photos_and_a_720p_clip_of_real_frames(load_media, media):
    for name, sizes in load_media.photos.items():
        for size, path in sizes.items():
            image = cv2.imread(str(path))
            assert image is not None, path
            if size == FACE_CROP:
                assert image.shape[:2] == (224, 224), (path, image.shape)
            else:
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
    assert decoded.kind == "video" and decoded.format == "mp4" and decoded.total_frames == 300
    assert len(decoded.frame_indices) == 3 and (decoded.frame_indices[0], decoded.frame_indices[-1]) == (0, 299)


def test_the_720p_clip_and_the_big_photos_still_show_the_face(load_media, default_pipeline):
    answer = default_pipeline.score(load_media.videos["clip_720p"].read_bytes())
    assert verdict_problems(answer.to_json(), "video") == []
    assert sum(frame.face_detected for frame in answer.frames) >= len(answer.frames) - 2
    for path in load_media.photos_of_size("4k"):
        answer = default_pipeline.score(path.read_bytes())
        assert verdict_problems(answer.to_json(), "image") == [] and len(answer.faces) == 1, path


def test_a_face_crop_is_what_the_network_classifies(load_media, default_pipeline):
    # The crop's side is the face's longer side times (1 + margin): searched again, the face is found centred,
    # its longer side 224 / (1 + margin) px, within the search's own spread.
    expected_side = 224 / (1 + ModelConfig().face_margin)
    for path in load_media.photos_of_size(FACE_CROP):
        answer = default_pipeline.score(path.read_bytes())
        assert len(answer.faces) == 1, path
        x1, y1, x2, y2 = answer.faces[0].box
        assert abs(max(x2 - x1, y2 - y1) - expected_side) < 0.15 * expected_side, (path, answer.faces[0].box)
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        assert all(abs(c - 112) < 0.1 * 224 for c in centre), (path, answer.faces[0].box)


def test_the_schema_accepts_real_answers_and_names_what_is_wrong(default_pipeline, media):
    image = default_pipeline.score(media.astronaut.read_bytes()).to_json()
    video = default_pipeline.score(media.face_video.read_bytes()).to_json()
    assert verdict_problems(image, "image") == []
    assert verdict_problems(video, "video") == []
    assert verdict_problems(image, "video") == ["media.type is 'image', expected 'video'"]

    flipped = json.loads(json.dumps(image))
    flipped["label"] = "REAL" if image["label"] == "FAKE" else "FAKE"
    assert any("contradicts" in p for p in verdict_problems(flipped))
    missing = {k: v for k, v in image.items() if k != "fake_probability"}
    assert any("fake_probability" in p for p in verdict_problems(missing))
    broken_video = json.loads(json.dumps(video))
    broken_video["sampled_frame_indices"] = broken_video["sampled_frame_indices"][1:]
    assert any("sampled_frame_indices" in p for p in verdict_problems(broken_video))
    assert verdict_problems({"error": "corrupt_media", "detail": "x"})
