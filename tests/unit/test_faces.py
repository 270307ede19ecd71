"""Faces: boxes that lie on the real faces, at any resolution, and the documented fallback.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from deepfake_detector import PipelineSettings
from deepfake_detector.faces import FaceDetector, detection_size, select_faces, shrink
from deepfake_detector.transforms import center_region, face_region
from deepfake_ops.load_media import write_group_photo

from tests.support import assert_on_face
from tests.support.media import load_rgb


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(PipelineSettings())


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_the_box_lies_on_the_real_face(detector, media, name):
    found = detector.detect([load_rgb(getattr(media, name))])[0]
    faces = found.faces
    assert len(faces) == 1 and found.search == "first" and found.left_out == 0
    assert faces[0].probability > 0.95
    assert_on_face(faces[0].box, name)


def test_a_photo_without_a_face_finds_none(detector, media):
    (found,) = detector.detect([load_rgb(media.cat)])
    assert found.faces == [] and found.search == "none"


def test_boxes_map_back_to_full_resolution(detector, media):
    """Detection runs on a copy sized for the smallest face worth scoring (1/16 of the shorter side -> 24 px:
    384 px here); a 4x larger photo must give the same box, scaled."""
    small = load_rgb(media.astronaut)
    large = cv2.resize(small, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    assert detection_size(2048, 2048, detector.settings) == (384, 384)
    small_box = np.array(detector.detect([small])[0].faces[0].box)
    large_box = np.array(detector.detect([large])[0].faces[0].box) / 4
    assert np.abs(small_box - large_box).max() < 6


def test_frames_of_different_sizes_in_one_call(detector, media):
    photos = [load_rgb(media.astronaut), load_rgb(media.cat), load_rgb(media.grace_hopper)]
    faces = [found.faces for found in detector.detect(photos)]
    assert [len(f) for f in faces] == [1, 0, 1]
    assert_on_face(faces[0][0].box, "astronaut")
    assert_on_face(faces[2][0].box, "grace_hopper")


def test_several_faces_are_kept_most_confident_first(detector, media):
    left = load_rgb(media.astronaut)
    right = cv2.resize(load_rgb(media.grace_hopper), (437, 512))
    both = np.concatenate([left, right], axis=1)
    faces = detector.detect([both])[0].faces
    assert len(faces) == 2
    assert faces[0].probability >= faces[1].probability
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in faces)
    assert centres[0] < 512 < centres[1]
    limited = FaceDetector(PipelineSettings(max_faces_per_frame=1)).detect([both])[0]
    assert len(limited.faces) == 1 and limited.left_out == 1


def test_most_confident_faces_are_kept_first_and_ties_keep_mtcnns_order():
    """The selection policy on given MTCNN output: weak detections dropped, boxes mapped to the frame, most
    confident first with ties in MTCNN's order, then cut at max_faces_per_frame."""
    boxes = np.array([[10, 10, 60, 60], [100, 10, 150, 60], [200, 10, 250, 60], [300, 10, 350, 60],
                      [400, 10, 450, 60]], dtype=np.float32)
    probabilities = np.array([0.95, 0.999, 0.97, 0.999, 0.5], dtype=np.float32)
    kept, left_out = select_faces(boxes, probabilities, (2.0, 2.0), (960, 960),
                                  PipelineSettings(max_faces_per_frame=3))
    assert [face.box[0] for face in kept] == [200, 600, 400] and left_out == 1  # the 0.5 one is not a face
    assert [face.probability for face in kept] == pytest.approx([0.999, 0.999, 0.97])
    one, left_out = select_faces(boxes, probabilities, (2.0, 2.0), (960, 960), PipelineSettings(max_faces_per_frame=1))
    assert [face.box[0] for face in one] == [200] and left_out == 3
    assert select_faces(None, None, (1.0, 1.0), (960, 960), PipelineSettings()) == ([], 0)


def test_face_region_is_a_square_inside_the_image():
    region = face_region((10.0, 20.0, 110.0, 160.0), width=400, height=300, margin=0.3)
    x1, y1, x2, y2 = region
    assert x2 - x1 == y2 - y1 == 182
    assert x1 >= 0 and y1 >= 0 and x2 <= 400 and y2 <= 300
    assert x1 <= 10 and y1 <= 20 and x2 >= 110 and y2 >= 160
    huge = face_region((0.0, 0.0, 390.0, 290.0), width=400, height=300, margin=0.3)
    assert huge[3] - huge[1] == 300 and huge[2] - huge[0] == 300


def test_center_region_is_the_largest_centred_square():
    assert center_region(451, 300) == (75, 0, 375, 300)
    assert center_region(300, 500) == (0, 100, 300, 400)


@pytest.mark.parametrize("size", [(3840, 2160), (1843, 2160), (1080, 1080), (700, 640)])
def test_shrink_is_an_area_filter(media, size):
    """The detection copy comes from ``shrink``: a one-step area resize to within 2 grey levels on average
    (exactly that for a whole factor or one below 2), whatever the factor, partial blocks at the edges included."""
    photo = cv2.resize(load_rgb(media.grace_hopper), size, interpolation=cv2.INTER_CUBIC)
    width, height = detection_size(*size, PipelineSettings())
    shrunk = shrink(photo, width, height)
    one_step = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
    assert shrunk.shape == one_step.shape == (height, width, 3)
    difference = np.abs(shrunk.astype(int) - one_step.astype(int))
    if max(size[0] / width, size[1] / height) < 2:
        assert difference.max() == 0
    else:
        assert difference.mean() < 2 and np.percentile(difference, 99) <= 20


def wide_shot(media, face_height: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 3840x2160 frame: the cat photo (no face) stretched over it, with the Grace Hopper portrait shrunk by
    ``face_height / 230`` (MTCNN's box of her face is then a little shorter than ``face_height``), pasted at a
    known place (returned as x1, y1, x2, y2)."""
    frame = cv2.resize(load_rgb(media.cat), (3840, 2160), interpolation=cv2.INTER_LINEAR)
    portrait = load_rgb(media.grace_hopper)
    scale = face_height / 230  # her face is about 230 px tall in the 512x600 photo
    small = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    top, left = 1200, 2600
    frame[top:top + small.shape[0], left:left + small.shape[1]] = small
    return frame, (left, top, left + small.shape[1], top + small.shape[0])


def test_a_face_too_small_for_the_first_search_is_found_by_the_second_look(detector, media):
    """In a 4K wide shot the first search looks for faces from 1/16 of the shorter side (135 px); a face of
    about 60 px is not among them, and the second look (a 1920x1080 copy, from 24 px of it) finds it."""
    frame, (x1, y1, x2, y2) = wide_shot(media, 70)
    (found,) = detector.detect([frame])
    assert found.search == "second_look" and len(found.faces) == 1
    box = found.faces[0].box
    assert x1 <= (box[0] + box[2]) / 2 <= x2 and y1 <= (box[1] + box[3]) / 2 <= y2
    assert 45 <= box[3] - box[1] <= 90
    (first_only,) = FaceDetector(PipelineSettings(second_look_max_pixels=0)).detect([frame])
    assert first_only.faces == [] and first_only.search == "none"


def test_a_face_large_enough_needs_no_second_look(detector, media):
    frame, _ = wide_shot(media, 200)
    (found,) = detector.detect([frame])
    assert found.search == "first" and len(found.faces) == 1


def test_every_face_of_a_group_photo_is_scored(detector, tmp_path):
    """Eight real faces on a 1920x1080 canvas: all eight are kept (the bound is 32); a bound of 5 keeps the five
    most confident and says that three were left out."""
    write_group_photo(tmp_path / "group.jpg")
    group = load_rgb(tmp_path / "group.jpg")
    (found,) = detector.detect([group])
    assert len(found.faces) == 8 and found.left_out == 0
    (capped,) = FaceDetector(PipelineSettings(max_faces_per_frame=5)).detect([group])
    assert len(capped.faces) == 5 and capped.left_out == 3
    assert [face.probability for face in capped.faces] == sorted((f.probability for f in found.faces),
                                                                 reverse=True)[:5]
